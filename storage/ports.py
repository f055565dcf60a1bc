"""Small storage ports. Each has an in-memory adapter (tests, the pure scenarios) and a
real one (PostgreSQL or Redis); tests/integration/test_storage_contract.py runs one suite
against both."""
from __future__ import annotations

from typing import Mapping, Protocol, Sequence

from app.domain.ledger import Posting

# (topic, partition) -> the next offset to read, i.e. last committed offset + 1.
Positions = Mapping[tuple[str, int], int]


class LedgerStore(Protocol):
    async def append(self, postings: Sequence[Posting], positions: Positions, consumer: str) -> int:
        """Store the postings and the reader's positions in one transaction; a leg whose
        (tenant_id, operation_id, leg) is already stored is skipped. Returns rows added."""

    async def positions(self, consumer: str) -> dict[tuple[str, int], int]: ...

    async def account_balances(self, tenant_id: str) -> dict[str, int]:
        """Credits minus debits per account, over the whole ledger of a tenant."""

    async def entries(self, tenant_id: str, operation_id: str) -> list[Posting]: ...


class DepositRoutes(Protocol):
    """Which player a deposit belongs to, so a PSP webhook (which names only the
    deposit) reaches the agent that owns the player."""

    async def claim(self, tenant_id: str, deposit_id: str, player_id: str) -> str:
        """Record the route unless one exists; return the player the deposit belongs to."""

    async def lookup(self, tenant_id: str, deposit_id: str) -> str | None: ...


class WalletCache(Protocol):
    async def put(self, tenant_id: str, player_id: str, version: int, snapshot_json: str, ttl_s: int) -> bool:
        """Store the snapshot unless a newer version is cached; True when stored."""

    async def get(self, tenant_id: str, player_id: str) -> str | None: ...


class SignatureGuard(Protocol):
    async def first_use(self, signature: str, ttl_s: int) -> bool:
        """True the first time a signature is seen within ttl_s, False on a replay."""
