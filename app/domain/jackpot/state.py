"""The pool record: everything about one jackpot pool that a decision reads, kept in one
table record keyed by pool_id, so a single changelog write carries the pool sizes, the
open payouts, the audit chain's head and the operation ids together.

Every pool is a set of tiers. A multi_tier pool names its tiers (mini, major, grand, ...);
every other kind has one tier, MAIN_TIER. Money is integer minor units in the pool's one
currency; odds are integer parts per billion (see rng.PPB)."""
from __future__ import annotations

from dataclasses import dataclass, field

from app.domain.audit import AuditRecord
from app.domain.jackpot.chain import GENESIS
from app.domain.ledger import Posting

POOL_KINDS = ("fixed", "progressive", "multi_tier", "must_drop", "timed")
MAIN_TIER = "main"
OPEN, CLOSED = "open", "closed"

# Payout saga states of a win.
PAYOUT_REQUESTED, CREDITED, FAILED = "PAYOUT_REQUESTED", "CREDITED", "FAILED"


@dataclass(frozen=True, slots=True)
class TierConfig:
    name: str
    seed_minor: int = 0
    cap_minor: int | None = None  # None: no cap
    share_bps: int = 10_000  # this tier's share of each contribution
    odds_ppb: int = 0  # chance that one eligible round wins the tier; 0: never by chance
    # A must-drop range; (0, 0) when the tier has none. The point drawn in it applies
    # from the next seeding, so changing the range never moves a committed point.
    drop_min_minor: int = 0
    drop_max_minor: int = 0

    @property
    def has_drop_range(self) -> bool:
        return self.drop_max_minor > 0


@dataclass(frozen=True, slots=True)
class PoolConfig:
    pool_id: str
    kind: str
    brand_ids: tuple[str, ...]  # one brand: a local pool; several: a network pool
    region: str  # the licence the pool belongs to; contributions from elsewhere are refused
    currency: str
    contribution_bps: int  # share of the bet taken when a contribution names no amount
    tiers: tuple[TierConfig, ...]
    server_seed_hash: str  # commitment of the server seed every draw is keyed by
    deadline_ms: int = 0  # timed pools: the first deadline ...
    period_ms: int = 0  # ... and the interval between deadlines
    min_bet_minor: int = 1  # smallest bet that takes part
    status: str = OPEN
    name: str = ""  # display name for widgets and reports

    def tier(self, name: str) -> TierConfig | None:
        for tier in self.tiers:
            if tier.name == name:
                return tier
        return None

    @property
    def network(self) -> bool:
        return len(self.brand_ids) > 1


@dataclass(frozen=True, slots=True)
class LastWin:
    trigger_id: str
    player_id: str
    amount_minor: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class TierState:
    name: str
    size_minor: int = 0
    # Contributions above the cap (or above a must-drop point) wait here; they fund the
    # next seed before the operator does.
    reserve_minor: int = 0
    cycle: int = 0  # how many times the tier was seeded, minus one
    # The hidden must-drop point of this cycle and its blinding nonce; 0 and "" when the
    # tier has no armed point. Never shown in a read: only the commitment is.
    drop_point_minor: int = 0
    drop_nonce: str = ""
    drop_commitment: str = ""
    last_win: LastWin | None = None


@dataclass(frozen=True, slots=True)
class Participant:
    """A player's entries in the current period of a timed pool: one per contribution."""

    player_id: str
    entries: int
    brand_id: str
    region: str
    round_id: str  # the latest round, named on the win if this player is drawn


@dataclass(frozen=True, slots=True)
class Win:
    trigger_id: str
    tier: str
    amount_minor: int
    player_id: str
    round_id: str
    brand_id: str
    region: str
    reason: str  # probabilistic | must_drop | deadline | manual:<reason>
    state: str  # PAYOUT_REQUESTED | CREDITED | FAILED
    attempt: int  # the payout request attempt in flight (or the last one)
    created_at_ms: int
    changed_at_ms: int  # when the last request was sent or the last failure came in
    fail_reason: str = ""
    retryable: bool = False
    closed_at_ms: int = 0  # set when CREDITED; the win is pruned after the retention period


@dataclass(frozen=True, slots=True)
class PayoutRequest:
    """`jp.payout.requested`: asks the wallet agent to credit the winner. The wallet
    credits under payout_key once, whatever the attempt; a repeat is answered again."""

    tenant_id: str
    pool_id: str
    tier: str
    trigger_id: str
    payout_key: str
    player_id: str
    round_id: str
    brand_id: str
    region: str
    amount_minor: int
    currency: str
    attempt: int
    reason: str
    requested_at_ms: int

    def to_wire(self) -> list:
        return [self.tenant_id, self.pool_id, self.tier, self.trigger_id, self.payout_key, self.player_id,
                self.round_id, self.brand_id, self.region, self.amount_minor, self.currency, self.attempt,
                self.reason, self.requested_at_ms]

    @classmethod
    def from_wire(cls, row: list) -> "PayoutRequest":
        return cls(*row)

    def to_message(self) -> dict:
        return {"tenant_id": self.tenant_id, "pool_id": self.pool_id, "tier": self.tier,
                "trigger_id": self.trigger_id, "idempotency_key": self.payout_key, "player_id": self.player_id,
                "round_id": self.round_id, "brand_id": self.brand_id, "region": self.region,
                "amount": self.amount_minor, "currency": self.currency, "attempt": self.attempt,
                "reason": self.reason, "requested_at_ms": self.requested_at_ms}


@dataclass(frozen=True, slots=True)
class Totals:
    """Running sums for the conservation rule:
    contributions + seeds == pool sizes + reserves + payouts."""

    contributions_minor: int = 0
    seeds_minor: int = 0  # operator funding only; seeds paid from a reserve move money inside the pool
    payouts_minor: int = 0  # every win ever requested, credited or not


@dataclass(frozen=True, slots=True)
class OperationRecord:
    request_hash: str
    code: str
    body: dict
    at_ms: int
    # Everything the operation emitted, kept so a replay can emit it again.
    postings: tuple[Posting, ...] = ()
    payouts: tuple[PayoutRequest, ...] = ()
    audit: tuple[AuditRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class PoolState:
    tenant_id: str
    pool_id: str
    config: PoolConfig | None = None
    tiers: dict[str, TierState] = field(default_factory=dict)
    deadline_ms: int = 0  # the next deadline of a timed pool
    participants: dict[str, Participant] = field(default_factory=dict)
    wins: dict[str, Win] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)
    chain_seq: int = 0  # seq of the next audit chain entry
    chain_hash: str = GENESIS  # hash of the last audit chain entry
    operations: dict[str, OperationRecord] = field(default_factory=dict)
    version: int = 0

    @classmethod
    def empty(cls, tenant_id: str, pool_id: str) -> "PoolState":
        return cls(tenant_id=tenant_id, pool_id=pool_id)

    @property
    def exists(self) -> bool:
        return self.config is not None

    def size(self, tier: str = MAIN_TIER) -> int:
        return self.tiers[tier].size_minor if tier in self.tiers else 0


def payout_key(pool_id: str, trigger_id: str) -> str:
    """The wallet credit's idempotency key: one credit per win, whatever the retries."""
    return f"jp_p_{pool_id}_{trigger_id}"
