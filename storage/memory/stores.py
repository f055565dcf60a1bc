"""In-memory adapters of the storage ports, with the same semantics as the real ones."""
from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import Sequence

from app.domain.ledger import Posting, account_deltas
from storage.ports import Positions


class MemoryLedgerStore:
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, int], Posting] = {}
        self._positions: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)

    async def append(self, postings: Sequence[Posting], positions: Positions, consumer: str) -> int:
        added = 0
        for p in postings:
            key = (p.tenant_id, p.operation_id, p.leg)
            if key not in self._rows:
                self._rows[key] = p
                added += 1
        mine = self._positions[consumer]
        for tp, offset in positions.items():
            mine[tp] = max(mine.get(tp, 0), offset)
        return added

    async def positions(self, consumer: str) -> dict[tuple[str, int], int]:
        return dict(self._positions[consumer])

    async def account_balances(self, tenant_id: str) -> dict[str, int]:
        return account_deltas(p for p in self._rows.values() if p.tenant_id == tenant_id)

    async def entries(self, tenant_id: str, operation_id: str) -> list[Posting]:
        return sorted(
            (p for (t, op, _), p in self._rows.items() if t == tenant_id and op == operation_id),
            key=lambda p: p.leg,
        )


class MemoryDepositRoutes:
    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], str] = {}

    async def claim(self, tenant_id: str, deposit_id: str, player_id: str) -> str:
        return self._routes.setdefault((tenant_id, deposit_id), player_id)

    async def lookup(self, tenant_id: str, deposit_id: str) -> str | None:
        return self._routes.get((tenant_id, deposit_id))


class MemoryWalletCache:
    def __init__(self, clock=time.monotonic) -> None:
        self._items: dict[tuple[str, str], tuple[int, str, float]] = {}
        self._clock = clock

    async def put(self, tenant_id: str, player_id: str, version: int, snapshot_json: str, ttl_s: int) -> bool:
        current = await self.get(tenant_id, player_id)
        if current is not None and json.loads(current)["version"] > version:
            return False
        self._items[(tenant_id, player_id)] = (version, snapshot_json, self._clock() + ttl_s)
        return True

    async def get(self, tenant_id: str, player_id: str) -> str | None:
        item = self._items.get((tenant_id, player_id))
        if item is None or item[2] <= self._clock():
            return None
        return item[1]


class MemorySignatureGuard:
    def __init__(self, clock=time.monotonic) -> None:
        self._seen: dict[str, float] = {}
        self._clock = clock

    async def first_use(self, signature: str, ttl_s: int) -> bool:
        now = self._clock()
        expires = self._seen.get(signature)
        if expires is not None and expires > now:
            return False
        self._seen[signature] = now + ttl_s
        return True
