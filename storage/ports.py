"""Small storage ports. Each has an in-memory adapter (tests, the pure scenarios) and a
real one (PostgreSQL or Redis); tests/integration/test_storage_contract.py runs one suite
against both."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence

from app.domain.audit import AuditRecord
from app.domain.errors import BankrollError
from app.domain.ledger import Posting

# (topic, partition) -> the next offset to read, i.e. last committed offset + 1.
Positions = Mapping[tuple[str, int], int]

# The pool an audit_id of a jackpot chain record names (group 1), in a spelling Python's re
# and PostgreSQL's regular expressions read alike.
CHAIN_AUDIT_POOL_PATTERN = r"^jp:([^:]+):chain:"


def chain_audit_prefix(pool_id: str) -> str:
    """How the audit_id of each of a pool's chain records begins: core.chain_audit_record
    names them jp:{pool_id}:chain:{seq} (tests/unit/test_jp_verify.py keeps the two in
    step). Pool ids have no ':', so the prefix names one pool."""
    return f"jp:{pool_id}:chain:"


class LedgerStore(Protocol):
    async def append(
        self, postings: Sequence[Posting], positions: Positions, consumer: str, audit: Sequence[AuditRecord] = ()
    ) -> int:
        """Store the postings, the audit records and the reader's positions in one
        transaction; a leg whose (tenant_id, operation_id, leg) is already stored is
        skipped, and so is an audit record whose (tenant_id, audit_id) is. Returns the
        ledger rows added (audit records are not counted). A system writer: one batch may
        hold several tenants' rows."""

    async def positions(self, consumer: str) -> dict[tuple[str, int], int]: ...

    async def account_balances(self, tenant_id: str) -> dict[str, int]:
        """Credits minus debits per account, over the whole ledger of a tenant."""

    async def entries(self, tenant_id: str, operation_id: str) -> list[Posting]: ...

    async def history(
        self, tenant_id: str, player_id: str, cursor: str | None, limit: int
    ) -> tuple[list[dict], str | None]:
        """The ledger legs whose player_id is the player's, newest first, at most `limit`
        of them after the position `cursor` names (None: from the newest). Each leg is a
        dict of entry_id, operation_id, leg, debit_account, credit_account, amount_minor,
        currency, category, reason and created_at (ISO 8601, UTC). Returns the page and
        the opaque cursor of the next one, or None when this page is the last. Raises
        ValueError for a cursor this store did not make or a limit below 1."""

    async def audit(self, tenant_id: str, player_id: str, limit: int) -> list[AuditRecord]:
        """The player's latest `limit` audit records, newest (created_at) first."""

    async def chain_records(self, tenant_id: str, pool_id: str) -> list[AuditRecord]:
        """The jackpot pool's hash-chain entries as stored: the records of kind "jp_chain"
        whose audit_id begins with chain_audit_prefix(pool_id), whatever their detail
        says, ordered by the entry's seq (detail "seq") as a number, then by storage
        order. A record whose seq is not a number (only tampering makes one) comes last,
        so the verifier still sees it instead of the read failing."""

    async def chain_pools(self, tenant_id: str) -> list[str]:
        """The pools the audit_ids of the tenant's chain records name
        (CHAIN_AUDIT_POOL_PATTERN), sorted."""

    async def ledger_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        """A system read over every tenant, for the reconciliation: (tenant_id, account)
        -> (balance, turnover), where balance is credits minus debits and turnover is
        credits plus debits. Half the sum of all turnovers is the ledger's volume."""


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


class PoolCache(Protocol):
    """Jackpot pool snapshots (core.pool_view as JSON) for pool reads and live widgets.
    A put that stores also announces the snapshot to the tenant's subscribers."""

    async def put(self, tenant_id: str, pool_id: str, version: int, view_json: str, ttl_s: int) -> bool:
        """Store the snapshot unless a newer version is cached; True when stored."""

    async def get(self, tenant_id: str, pool_id: str) -> str | None: ...

    async def list(self, tenant_id: str) -> list[str]:
        """Every cached snapshot of the tenant's pools, ordered by pool id."""


class SignatureGuard(Protocol):
    async def first_use(self, signature: str, ttl_s: int) -> bool:
        """True the first time a signature is seen within ttl_s, False on a replay."""


# ---------------------------------------------------------------- the agents' state

@dataclass(frozen=True, slots=True)
class RecordWrite:
    """A record a batch changed, written only over `prior_version`, the version the batch
    decided on (0 for a key the worker found no record of)."""

    key: bytes
    tenant_id: str
    partition: int
    prior_version: int
    version: int
    record: bytes


@dataclass(frozen=True, slots=True)
class AnswerWrite:
    key: bytes
    operation_key: str
    tenant_id: str
    answer: bytes
    answered_at_ms: int


@dataclass(frozen=True, slots=True)
class Claim:
    """An id an operation took for good (`kind:id`), owned by the player of `key`."""

    tenant_id: str
    route: str
    player_id: str


@dataclass
class BatchCommit:
    """Everything one batch of an agent makes durable, in one transaction."""

    agent: str
    consumer: str
    postings: list[Posting] = field(default_factory=list)
    audit: list[AuditRecord] = field(default_factory=list)
    records: list[RecordWrite] = field(default_factory=list)
    answers: list[AnswerWrite] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    positions: dict[tuple[str, int], int] = field(default_factory=dict)


class StaleRecords(BankrollError):
    """A record was written since the batch loaded it (another worker owned the key in
    between): nothing of the batch was stored; reload the keys and decide again."""

    def __init__(self, agent: str, keys: Sequence[bytes]) -> None:
        super().__init__(f"{agent} records changed under the batch: {[k.decode(errors='replace') for k in keys]}")
        self.keys = list(keys)


class ClaimTaken(BankrollError):
    """An id the batch claimed belongs to another player: nothing of the batch was
    stored; decide again knowing the claim."""

    def __init__(self, claims: Sequence[Claim]) -> None:
        super().__init__(f"ids already taken: {[c.route for c in claims]}")
        self.claims = list(claims)


class PostingsConflict(BankrollError):
    """Postings of a batch have the (tenant, operation id, leg) of stored ones: nothing of
    the batch was stored (the ledger must never silently keep one of two). A replay emits
    no postings, so the operation was applied before and its answer is no longer kept
    (redelivered after the retention period): the agent decides the batch again with
    those operations refused."""

    def __init__(self, operations: Sequence[tuple[str, str]]) -> None:
        super().__init__(f"operations already in the ledger: {sorted(operations)[:10]}")
        self.operations = set(operations)


class AgentStore(Protocol):
    async def commit(self, batch: BatchCommit) -> None:
        """Store the batch in one transaction, or nothing: raises StaleRecords when a
        record's stored version is not its prior_version, ClaimTaken when a claimed id
        belongs to another player, PostingsConflict when a posting's operation id and leg
        are stored already. Audit records already stored are skipped; answers already
        stored are kept as they are."""

    async def records(self, agent: str, partitions: Iterable[int]) -> list[tuple[bytes, int, bytes]]:
        """(key, version, record) of every record of the agent on these partitions."""

    async def records_of(self, agent: str, keys: Iterable[bytes]) -> dict[bytes, tuple[int, bytes]]: ...

    async def answers_and_claims(
        self, agent: str, answers: Iterable[tuple[bytes, str]], claims: Iterable[tuple[str, str]],
    ) -> tuple[dict[tuple[bytes, str], bytes], dict[tuple[str, str], str]]:
        """`answers` and `claims` at once (one round trip where the store has them)."""

    async def answers(self, agent: str, wanted: Iterable[tuple[bytes, str]]) -> dict[tuple[bytes, str], bytes]:
        """The stored answers of these (key, operation key) pairs that exist."""

    async def claims(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The owning player of these (tenant, route) pairs that are claimed."""

    async def prune_answers(self, answered_before_ms: int, limit: int) -> int:
        """Delete up to `limit` answers older than the cutoff; returns how many."""
