"""The wallet record: everything about one (tenant, player) that a decision reads, kept
in one table record so a single changelog write carries balances, holds and the
operation ids together."""
from __future__ import annotations

from dataclasses import dataclass, field

from app.domain.ledger import Posting


@dataclass(frozen=True, slots=True)
class OperationRecord:
    request_hash: str
    code: str
    body: dict
    at_ms: int
    # The postings the operation produced, kept so a replay can re-emit them.
    postings: tuple[Posting, ...] = ()


@dataclass(frozen=True, slots=True)
class PendingDeposit:
    deposit_id: str
    amount_minor: int
    currency: str
    method: str
    state: str  # PENDING | SUCCEEDED | FAILED
    closed_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Hold:
    """Money moved from the player's wallets to their HOLD account, pending an outcome.

    `sources` is what is still held, per source wallet, in spend-policy order: captures
    consume it front to back, a release returns whatever is left to where it came from."""

    hold_id: str
    kind: str  # "bet" | "withdrawal"
    ref: str  # the bet or withdrawal id
    currency: str
    amount_minor: int
    sources: tuple[tuple[str, int], ...]
    expires_at_ms: int
    policy: str
    provider: str = ""
    captured_minor: int = 0
    state: str = "HELD"  # HELD | CAPTURED | RELEASED | EXPIRED | SETTLED
    closed_at_ms: int = 0

    @property
    def remaining_minor(self) -> int:
        return sum(amount for _, amount in self.sources)

    @property
    def open(self) -> bool:
        return self.state == "HELD"


@dataclass(frozen=True, slots=True)
class Withdrawal:
    withdrawal_id: str
    amount_minor: int
    currency: str
    method: str
    destination: str
    state: str  # PENDING | SUCCEEDED | FAILED | EXPIRED
    hold_id: str
    created_at_ms: int
    closed_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Bonus:
    bonus_id: str
    currency: str
    amount_minor: int
    wager_required_minor: int  # turnover still needed before the bonus converts to cash
    expires_at_ms: int
    state: str  # ACTIVE | CONVERTED | FORFEITED
    closed_at_ms: int = 0


@dataclass(frozen=True, slots=True)
class Limits:
    """Responsible-gaming settings. Amount limits are keyed "deposit:day", "bet:week",
    "loss:month", ...; "session:minutes" bounds one continuous session."""

    values: dict[str, int] = field(default_factory=dict)
    # A raised or removed limit takes effect only after a cooling period:
    # key -> (new value or None for removal, effective from ms).
    pending: dict[str, tuple[int | None, int]] = field(default_factory=dict)
    cool_off_until_ms: int = 0
    self_excluded_until_ms: int = 0

    def effective(self, key: str, now_ms: int) -> int | None:
        change = self.pending.get(key)
        if change is not None and now_ms >= change[1]:
            return change[0]
        return self.values.get(key)


@dataclass(frozen=True, slots=True)
class WalletState:
    tenant_id: str
    player_id: str
    registered: bool = False
    currency: str = ""
    country: str = ""
    # "CASH:EUR" -> minor units. "HOLD:EUR" is the total held.
    balances: dict[str, int] = field(default_factory=dict)
    deposits: dict[str, PendingDeposit] = field(default_factory=dict)
    holds: dict[str, Hold] = field(default_factory=dict)
    withdrawals: dict[str, Withdrawal] = field(default_factory=dict)
    bonuses: dict[str, Bonus] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    # Responsible-gaming and velocity counters: "deposit:d20412" -> minor units,
    # "withdrawals:h490000" -> count. Only the current period of each kind is kept.
    usage: dict[str, int] = field(default_factory=dict)
    session_started_ms: int = 0
    last_bet_ms: int = 0
    kyc_status: str = "PENDING"  # PENDING | VERIFIED | REJECTED
    aml_hold: bool = False
    operations: dict[str, OperationRecord] = field(default_factory=dict)
    version: int = 0

    @classmethod
    def empty(cls, tenant_id: str, player_id: str) -> "WalletState":
        return cls(tenant_id=tenant_id, player_id=player_id)

    def balance(self, wallet_type: str, currency: str) -> int:
        return self.balances.get(f"{wallet_type}:{currency}", 0)

    def next_deadline_ms(self) -> int | None:
        """The earliest time something in this record expires by itself."""
        deadlines = [h.expires_at_ms for h in self.holds.values() if h.open]
        deadlines += [b.expires_at_ms for b in self.bonuses.values() if b.state == "ACTIVE"]
        return min(deadlines) if deadlines else None
