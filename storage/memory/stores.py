"""In-memory adapters of the storage ports, with the same semantics as the real ones."""
from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import replace
from typing import Iterable, Sequence

from app.domain.audit import AuditRecord
from app.domain.ledger import Posting, account_deltas
from storage.history import check_limit, decode_cursor, encode_cursor, history_row
from storage.ports import (
    CHAIN_AUDIT_POOL_PATTERN, BatchCommit, Claim, ClaimTaken, Positions, PostingsConflict, StaleRecords,
    chain_audit_prefix,
)

_CHAIN_AUDIT_POOL = re.compile(CHAIN_AUDIT_POOL_PATTERN)


class MemoryLedgerStore:
    def __init__(self) -> None:
        # Rows keep the entry id PostgreSQL's bigserial would give them: increasing in
        # insertion order, so history pages in the same order as in PostgreSQL.
        self._rows: dict[tuple[str, str, int], tuple[int, Posting]] = {}
        self._next_entry_id = 1
        self._audit: dict[tuple[str, str], tuple[int, AuditRecord]] = {}
        self._next_audit_seq = 1
        self._positions: dict[str, dict[tuple[str, int], int]] = defaultdict(dict)

    async def append(
        self, postings: Sequence[Posting], positions: Positions, consumer: str, audit: Sequence[AuditRecord] = ()
    ) -> int:
        added = 0
        for p in postings:
            key = (p.tenant_id, p.operation_id, p.leg)
            if key not in self._rows:
                self._rows[key] = (self._next_entry_id, p)
                self._next_entry_id += 1
                added += 1
        for record in audit:
            # A copy of the detail, as PostgreSQL keeps its own jsonb: a caller changing
            # its dict afterwards must not change what was stored.
            key = (record.tenant_id, record.audit_id)
            if key not in self._audit:
                stored = replace(record, detail=json.loads(json.dumps(record.detail)))
                self._audit[key] = (self._next_audit_seq, stored)
                self._next_audit_seq += 1
        mine = self._positions[consumer]
        for tp, offset in positions.items():
            mine[tp] = max(mine.get(tp, 0), offset)
        return added

    async def positions(self, consumer: str) -> dict[tuple[str, int], int]:
        return dict(self._positions[consumer])

    async def account_balances(self, tenant_id: str) -> dict[str, int]:
        return account_deltas(p for _, p in self._rows.values() if p.tenant_id == tenant_id)

    async def entries(self, tenant_id: str, operation_id: str) -> list[Posting]:
        return sorted(
            (p for (t, op, _), (_, p) in self._rows.items() if t == tenant_id and op == operation_id),
            key=lambda p: p.leg,
        )

    async def history(
        self, tenant_id: str, player_id: str, cursor: str | None, limit: int
    ) -> tuple[list[dict], str | None]:
        before = None if cursor is None else decode_cursor(cursor)
        check_limit(limit)
        legs = sorted(
            (
                (entry_id, p) for entry_id, p in self._rows.values()
                if p.tenant_id == tenant_id and p.player_id == player_id and (before is None or entry_id < before)
            ),
            key=lambda item: item[0],
            reverse=True,
        )
        page = legs[:limit]
        next_cursor = encode_cursor(page[-1][0]) if len(legs) > limit else None
        return [history_row(entry_id, p) for entry_id, p in page], next_cursor

    async def audit(self, tenant_id: str, player_id: str, limit: int) -> list[AuditRecord]:
        check_limit(limit)
        mine = sorted(
            (
                (record.created_at_ms, seq, record) for seq, record in self._audit.values()
                if record.tenant_id == tenant_id and record.player_id == player_id
            ),
            key=lambda item: (item[0], item[1]),
            reverse=True,
        )
        return [replace(record, detail=json.loads(json.dumps(record.detail))) for _, _, record in mine[:limit]]

    def _chain_of(self, tenant_id: str) -> list[tuple[int, AuditRecord]]:
        return [
            (seq, record) for seq, record in self._audit.values()
            if record.tenant_id == tenant_id and record.kind == "jp_chain"
        ]

    async def chain_records(self, tenant_id: str, pool_id: str) -> list[AuditRecord]:
        def order(item: tuple[int, AuditRecord]) -> tuple:
            stored_seq, record = item
            seq = record.detail.get("seq") if isinstance(record.detail, dict) else None
            # The order of PostgreSQL's jsonb: a JSON number sorts by its value; true and
            # false are not numbers there, although Python's bool is an int.
            if isinstance(seq, (int, float)) and not isinstance(seq, bool):
                return (0, seq, stored_seq)
            return (1, 0, stored_seq)

        prefix = chain_audit_prefix(pool_id)
        mine = sorted((item for item in self._chain_of(tenant_id) if item[1].audit_id.startswith(prefix)), key=order)
        return [replace(record, detail=json.loads(json.dumps(record.detail))) for _, record in mine]

    async def chain_pools(self, tenant_id: str) -> list[str]:
        named = (_CHAIN_AUDIT_POOL.match(record.audit_id) for _, record in self._chain_of(tenant_id))
        return sorted({match.group(1) for match in named if match})

    async def ledger_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        totals: dict[tuple[str, str], tuple[int, int]] = {}
        for _, p in self._rows.values():
            for account, delta in ((p.debit_account, -p.amount_minor), (p.credit_account, p.amount_minor)):
                balance, turnover = totals.get((p.tenant_id, account), (0, 0))
                totals[(p.tenant_id, account)] = (balance + delta, turnover + p.amount_minor)
        return totals


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


class MemoryPoolCache:
    def __init__(self, clock=time.monotonic) -> None:
        self._items: dict[tuple[str, str], tuple[int, str, float]] = {}
        self._clock = clock
        self.published: list[tuple[str, str]] = []  # (tenant_id, snapshot JSON), as a channel would carry them

    async def put(self, tenant_id: str, pool_id: str, version: int, view_json: str, ttl_s: int) -> bool:
        item = self._items.get((tenant_id, pool_id))
        if item is not None and item[2] > self._clock() and item[0] > version:
            return False
        self._items[(tenant_id, pool_id)] = (version, view_json, self._clock() + ttl_s)
        self.published.append((tenant_id, view_json))
        return True

    async def get(self, tenant_id: str, pool_id: str) -> str | None:
        item = self._items.get((tenant_id, pool_id))
        if item is None or item[2] <= self._clock():
            return None
        return item[1]

    async def list(self, tenant_id: str) -> list[str]:
        out = []
        for (tenant, pool_id) in sorted(self._items):
            if tenant == tenant_id:
                value = await self.get(tenant, pool_id)
                if value is not None:
                    out.append(value)
        return out


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


class MemoryAgentStore:
    """The agents' state with the semantics of storage.postgres.agent_state: a batch is
    stored whole or not at all, records only over their prior version, claims once."""

    def __init__(self, ledger: MemoryLedgerStore | None = None) -> None:
        self.ledger = ledger or MemoryLedgerStore()
        self.records_by_agent: dict[str, dict[bytes, tuple[int, int, bytes]]] = defaultdict(dict)
        self.answers_by_agent: dict[str, dict[tuple[bytes, str], tuple[bytes, int]]] = defaultdict(dict)
        self.routes: dict[tuple[str, str], str] = {}
        self.commits = 0

    async def commit(self, batch: BatchCommit) -> None:
        mine = self.records_by_agent[batch.agent]
        stale = [r.key for r in batch.records if mine.get(r.key, (0, 0, b""))[0] != r.prior_version
                 and r.key in mine]
        if stale:
            raise StaleRecords(batch.agent, stale)
        foreign = [c for c in batch.claims if self.routes.get((c.tenant_id, c.route), c.player_id) != c.player_id]
        if foreign:
            raise ClaimTaken([Claim(c.tenant_id, c.route, self.routes[(c.tenant_id, c.route)]) for c in foreign])
        stored = {(p.tenant_id, p.operation_id) for p in batch.postings
                  if (p.tenant_id, p.operation_id, p.leg) in self.ledger._rows}
        if stored:
            raise PostingsConflict(sorted(stored))
        await self.ledger.append(batch.postings, batch.positions, batch.consumer, audit=batch.audit)
        for r in batch.records:
            mine[r.key] = (r.version, r.partition, r.record)
        answers = self.answers_by_agent[batch.agent]
        for a in batch.answers:
            answers.setdefault((a.key, a.operation_key), (a.answer, a.answered_at_ms))
        for c in batch.claims:
            self.routes.setdefault((c.tenant_id, c.route), c.player_id)
        self.commits += 1

    async def records(self, agent: str, partitions: Iterable[int]) -> list[tuple[bytes, int, bytes]]:
        wanted = set(partitions)
        return [(k, v, raw) for k, (v, p, raw) in self.records_by_agent[agent].items() if p in wanted]

    async def records_of(self, agent: str, keys: Iterable[bytes]) -> dict[bytes, tuple[int, bytes]]:
        mine = self.records_by_agent[agent]
        return {k: (mine[k][0], mine[k][2]) for k in keys if k in mine}

    async def answers(self, agent: str, wanted: Iterable[tuple[bytes, str]]) -> dict[tuple[bytes, str], bytes]:
        mine = self.answers_by_agent[agent]
        return {pair: mine[pair][0] for pair in wanted if pair in mine}

    async def answers_and_claims(
        self, agent: str, answers: Iterable[tuple[bytes, str]], claims: Iterable[tuple[str, str]],
    ) -> tuple[dict[tuple[bytes, str], bytes], dict[tuple[str, str], str]]:
        return await self.answers(agent, answers), await self.claims(claims)

    async def claims(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        return {pair: self.routes[pair] for pair in wanted if pair in self.routes}

    async def prune_answers(self, answered_before_ms: int, limit: int) -> int:
        pruned = 0
        for answers in self.answers_by_agent.values():
            for pair in [p for p, (_, at_ms) in answers.items() if at_ms < answered_before_ms][:limit - pruned]:
                del answers[pair]
                pruned += 1
        return pruned
