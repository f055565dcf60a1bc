"""The wallet aggregate: commands, result codes, events, and the pure functions

    decide(state, command, ctx) -> Decision(outcome, events, postings, audit)
    evolve(state, events) -> state

Time, retention, limits and rates come in through the command and ``ctx``; nothing here
awaits or reads a clock. Replaying a command whose operation id is already recorded
returns the recorded result and emits no postings: a record is stored only together with
the postings of the decision that made it, so they are durable already. A rejection
changes nothing, not even the record of operation ids.

The record keeps a short window of recent operations and closed items (holds, deposits,
withdrawals, bonuses), bounded in time and count whatever the player's history. Older
answers and the ids of items no longer in the record are kept in storage; the agent
hands a decision the ones its command names: recorded answers by putting them into
`state.operations`, and ids already taken by putting their claims (`claim_of`) into
`ctx.claimed`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from enum import StrEnum
from typing import Callable, Union

from app.domain.audit import AuditRecord
from app.domain.errors import InvariantViolation
from app.domain.idempotency import same_request
from app.domain.ledger import WALLET_TYPES, Posting, account_deltas, check_postings, player_account, system_account
from app.domain.money import MAX_AMOUNT_MINOR, minor_exponent
from app.domain.wallet.calendar import MINUTE_MS, PERIODS, period_key
from app.domain.wallet.policies import SPEND_POLICIES, SpendSource, describe, plan_spend
from app.domain.wallet.state import (
    Bonus, Hold, Limits, OperationRecord, PendingDeposit, WalletState, Withdrawal,
)

PLAYER_WALLETS = tuple(t for t in WALLET_TYPES if t != "HOLD")
LIMIT_KINDS = ("deposit", "bet", "loss")
SESSION_IDLE_MS = 30 * MINUTE_MS  # a pause this long ends a playing session


class WalletResult(StrEnum):
    CREATED = "created"
    ACCEPTED = "accepted"
    OK = "ok"
    PLAYER_NOT_FOUND = "player_not_found"
    PLAYER_EXISTS_WITH_DIFFERENT_DETAILS = "player_exists_with_different_details"
    CURRENCY_NOT_SUPPORTED = "currency_not_supported"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    DEPOSIT_EXISTS = "deposit_exists"
    DEPOSIT_NOT_FOUND = "deposit_not_found"
    DEPOSIT_ALREADY_FINAL = "deposit_already_final"
    AMOUNT_MISMATCH = "amount_mismatch"
    FEE_EXCEEDS_AMOUNT = "fee_exceeds_amount"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    POLICY_NOT_FOUND = "policy_not_found"
    BET_EXISTS = "bet_exists"
    BET_NOT_FOUND = "bet_not_found"
    BET_ALREADY_SETTLED = "bet_already_settled"
    HOLD_NOT_FOUND = "hold_not_found"
    HOLD_NOT_OPEN = "hold_not_open"
    CAPTURE_EXCEEDS_HOLD = "capture_exceeds_hold"
    INVALID_PAYOUT = "invalid_payout"
    WITHDRAWAL_EXISTS = "withdrawal_exists"
    WITHDRAWAL_NOT_FOUND = "withdrawal_not_found"
    WITHDRAWAL_ALREADY_FINAL = "withdrawal_already_final"
    BONUS_EXISTS = "bonus_exists"
    CONVERSION_EXISTS = "conversion_exists"
    # Its postings' operation ids are in the ledger already: applied long ago, its answer
    # no longer kept (a round or a payout request redelivered after the retention).
    OPERATION_ALREADY_APPLIED = "operation_already_applied"
    ADJUSTMENT_EXISTS = "adjustment_exists"
    SAME_CURRENCY = "same_currency"
    INVALID_RATE = "invalid_rate"
    AMOUNT_TOO_SMALL = "amount_too_small"
    CANNOT_SHORTEN_EXCLUSION = "cannot_shorten_exclusion"
    # Refusals by responsible gaming, anti-fraud and compliance: always audited.
    DEPOSIT_LIMIT_EXCEEDED = "deposit_limit_exceeded"
    BET_LIMIT_EXCEEDED = "bet_limit_exceeded"
    LOSS_LIMIT_EXCEEDED = "loss_limit_exceeded"
    SESSION_LIMIT_EXCEEDED = "session_limit_exceeded"
    COOL_OFF_ACTIVE = "cool_off_active"
    SELF_EXCLUDED = "self_excluded"
    KYC_REQUIRED = "kyc_required"
    AML_HOLD = "aml_hold"
    VELOCITY_LIMIT_EXCEEDED = "velocity_limit_exceeded"
    DESTINATION_BLOCKED = "destination_blocked"


SUCCESS = frozenset({WalletResult.CREATED, WalletResult.ACCEPTED, WalletResult.OK})
AUDITED_REFUSALS = frozenset({
    WalletResult.DEPOSIT_LIMIT_EXCEEDED, WalletResult.BET_LIMIT_EXCEEDED, WalletResult.LOSS_LIMIT_EXCEEDED,
    WalletResult.SESSION_LIMIT_EXCEEDED, WalletResult.COOL_OFF_ACTIVE, WalletResult.SELF_EXCLUDED,
    WalletResult.KYC_REQUIRED, WalletResult.AML_HOLD, WalletResult.VELOCITY_LIMIT_EXCEEDED,
    WalletResult.DESTINATION_BLOCKED,
})


# ---------------------------------------------------------------- commands

@dataclass(frozen=True, slots=True)
class CreatePlayer:
    player_id: str
    currency: str
    country: str


@dataclass(frozen=True, slots=True)
class SetLimits:
    """Amount limits as ((kind, period, minor units or None to remove), ...)."""

    amounts: tuple[tuple[str, str, int | None], ...] = ()
    session_minutes: int | None = None
    clear_session: bool = False
    cool_off_until_ms: int = 0
    self_excluded_until_ms: int = 0


@dataclass(frozen=True, slots=True)
class SetPlayerStatus:
    kyc_status: str
    aml_hold: bool


@dataclass(frozen=True, slots=True)
class RequestDeposit:
    deposit_id: str
    player_id: str
    amount_minor: int
    currency: str
    method: str


@dataclass(frozen=True, slots=True)
class ApplyPspResult:
    """A PSP's verdict on a deposit, from its signed webhook."""

    psp: str
    event_id: str
    deposit_id: str
    status: str  # SUCCEEDED | FAILED
    amount_minor: int
    currency: str
    fee_minor: int


@dataclass(frozen=True, slots=True)
class PlaceBet:
    bet_id: str
    amount_minor: int
    currency: str
    policy: str
    provider: str = "house"


@dataclass(frozen=True, slots=True)
class SettleBet:
    bet_id: str
    result: str  # WIN | LOSS
    payout_minor: int


@dataclass(frozen=True, slots=True)
class CancelBet:
    bet_id: str


@dataclass(frozen=True, slots=True)
class CaptureHold:
    hold_id: str
    amount_minor: int


@dataclass(frozen=True, slots=True)
class ReleaseHold:
    hold_id: str


@dataclass(frozen=True, slots=True)
class RequestWithdrawal:
    withdrawal_id: str
    amount_minor: int
    currency: str
    method: str
    destination: str = ""


@dataclass(frozen=True, slots=True)
class ApplyWithdrawalResult:
    psp: str
    event_id: str
    withdrawal_id: str
    status: str  # SUCCEEDED | FAILED
    amount_minor: int
    currency: str
    fee_minor: int


@dataclass(frozen=True, slots=True)
class GrantBonus:
    bonus_id: str
    amount_minor: int
    currency: str
    wager_required_minor: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class ConvertFx:
    conversion_id: str
    wallet: str
    from_currency: str
    to_currency: str
    amount_minor: int
    rate: str  # decimal string: units of to_currency per unit of from_currency
    rate_valid_from_ms: int


@dataclass(frozen=True, slots=True)
class Adjust:
    """A correction: a new posting with a reason, never an edit of an old one."""

    adjustment_id: str
    wallet: str
    currency: str
    amount_minor: int  # signed: positive credits the player
    reason: str


@dataclass(frozen=True, slots=True)
class PlayRound:
    """A game round streamed in by a game server: stake and win in one operation."""

    round_id: str
    provider: str
    bet_minor: int
    win_minor: int
    currency: str
    policy: str
    # Jackpot contributions the round carries: (pool_id, explicit amount in minor units or
    # None for the pool's basis points). The wallet only passes them on: once the round is
    # settled, its agent sends each to the pool's agent (agents/wallet.py).
    brand_id: str = ""
    region: str = ""
    jackpots: tuple[tuple[str, int | None], ...] = ()


@dataclass(frozen=True, slots=True)
class CreditJackpot:
    """A jackpot win paid into the winner's CASH from PAYOUTS:jackpot, where the pool's drop
    posted it. Requested on `jp.payout.requested`; the operation key is the payout key
    jp_p_{pool}_{trigger}, so a request sent again (any attempt) credits once."""

    pool_id: str
    trigger_id: str
    tier: str
    amount_minor: int
    currency: str
    round_id: str
    brand_id: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passing: expire due holds and bonuses. Sent by the worker's timer."""


Command = Union[
    CreatePlayer, SetLimits, SetPlayerStatus, RequestDeposit, ApplyPspResult, PlaceBet, SettleBet, CancelBet,
    CaptureHold, ReleaseHold, RequestWithdrawal, ApplyWithdrawalResult, GrantBonus, ConvertFx, Adjust, PlayRound,
    CreditJackpot, Tick,
]


@dataclass(frozen=True, slots=True)
class Rules:
    """Operator policy the decisions apply; built from the settings, passed in."""

    bet_hold_ttl_ms: int = 120_000
    withdrawal_hold_ttl_ms: int = 24 * 3_600_000
    limit_increase_delay_ms: int = 24 * 3_600_000
    max_deposits_per_hour: int = 20
    max_withdrawals_per_hour: int = 5
    blocked_destinations: frozenset[str] = frozenset()
    # The record's window: operations answered within this long, at most this many, and
    # at most this many closed items of each kind (the newest).
    operation_window_ms: int = 600_000
    operation_window_count: int = 8
    closed_kept_per_kind: int = 8


@dataclass(frozen=True, slots=True)
class Context:
    tenant_id: str
    operation_key: str  # idempotency key, scoped to the tenant; "" for internal commands
    request_hash: str
    now_ms: int
    retention_ms: int
    rules: Rules = field(default_factory=Rules)
    # Claims (see claim_of) of ids taken by items no longer in the record, or by another
    # player: looked up in storage by the agent before the decision.
    claimed: frozenset[str] = frozenset()


# ---------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class PlayerRegistered:
    currency: str
    country: str


@dataclass(frozen=True, slots=True)
class DepositUpdated:
    deposit: PendingDeposit


@dataclass(frozen=True, slots=True)
class HoldUpdated:
    hold: Hold


@dataclass(frozen=True, slots=True)
class WithdrawalUpdated:
    withdrawal: Withdrawal


@dataclass(frozen=True, slots=True)
class BonusUpdated:
    bonus: Bonus


@dataclass(frozen=True, slots=True)
class LimitsSet:
    limits: Limits


@dataclass(frozen=True, slots=True)
class PlayerStatusSet:
    kyc_status: str
    aml_hold: bool


@dataclass(frozen=True, slots=True)
class UsageChanged:
    deltas: tuple[tuple[str, int], ...]
    stale: tuple[str, ...]  # counters of periods that are over


@dataclass(frozen=True, slots=True)
class SessionTouched:
    started_ms: int
    last_bet_ms: int


@dataclass(frozen=True, slots=True)
class BalancesChanged:
    deltas: tuple[tuple[str, int], ...]  # ("CASH:EUR", +1000)


@dataclass(frozen=True, slots=True)
class OperationRecorded:
    """An operation's answer enters the record's window. The window and the closed items
    are trimmed at the same time: operations answered before `prune_before_ms` or beyond
    the newest `keep_operations`; closed items closed before `closed_before_ms` or beyond
    the newest `keep_closed` of their kind."""

    key: str
    record: OperationRecord
    prune_before_ms: int
    keep_operations: int = 8
    closed_before_ms: int = 0
    keep_closed: int = 8


Event = Union[
    PlayerRegistered, DepositUpdated, HoldUpdated, WithdrawalUpdated, BonusUpdated, LimitsSet, PlayerStatusSet,
    UsageChanged, SessionTouched, BalancesChanged, OperationRecorded,
]


@dataclass(frozen=True, slots=True)
class Outcome:
    code: WalletResult
    body: dict

    @property
    def ok(self) -> bool:
        return self.code in SUCCESS


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    events: tuple[Event, ...] = ()
    postings: tuple[Posting, ...] = ()
    audit: tuple[AuditRecord, ...] = ()
    replayed: bool = False


# ---------------------------------------------------------------- helpers

def _reject(code: WalletResult, message: str) -> Decision:
    return Decision(Outcome(code, {"error": {"code": str(code), "message": message}}))


def _refuse(state: WalletState, ctx: Context, code: WalletResult, message: str, **detail: object) -> Decision:
    """A rejection that compliance must see later: the decision carries an audit record."""
    decision = _reject(code, message)
    audit = AuditRecord(
        tenant_id=ctx.tenant_id,
        audit_id=f"{ctx.operation_key}:{ctx.request_hash[:16]}:{ctx.now_ms}:{code}",
        player_id=state.player_id,
        kind="refusal",
        code=str(code),
        created_at_ms=ctx.now_ms,
        detail={"message": message, **detail},
    )
    return dataclasses.replace(decision, audit=(audit,))


class _Legs:
    """Collects the legs of one operation and turns them into postings."""

    def __init__(self, state: WalletState, ctx: Context, operation_id: str, reason: str) -> None:
        self.state, self.ctx, self.operation_id, self.reason = state, ctx, operation_id, reason
        self.legs: list[tuple[str, str, int, str, str]] = []

    def player(self, wallet: str, currency: str) -> str:
        return player_account(self.state.player_id, wallet, currency)

    def add(self, debit: str, credit: str, amount_minor: int, currency: str, category: str) -> None:
        if amount_minor:
            self.legs.append((debit, credit, amount_minor, currency, category))

    def balances_after(self, balances: dict[str, int]) -> dict[str, int]:
        """The player's balances once the legs so far are applied."""
        out = dict(balances)
        prefix = f"player:{self.state.player_id}:"
        for debit, credit, amount, _, _ in self.legs:
            if debit.startswith(prefix):
                out[debit[len(prefix):]] = out.get(debit[len(prefix):], 0) - amount
            if credit.startswith(prefix):
                out[credit[len(prefix):]] = out.get(credit[len(prefix):], 0) + amount
        return out

    def postings(self) -> tuple[Posting, ...]:
        return tuple(
            Posting(
                tenant_id=self.ctx.tenant_id, operation_id=self.operation_id, leg=i, debit_account=debit,
                credit_account=credit, amount_minor=amount, currency=currency, category=category,
                created_at_ms=self.ctx.now_ms, reason=self.reason, player_id=self.state.player_id,
            )
            for i, (debit, credit, amount, currency, category) in enumerate(self.legs)
        )


def _player_deltas(player_id: str, postings: tuple[Posting, ...]) -> tuple[tuple[str, int], ...]:
    prefix = f"player:{player_id}:"
    return tuple(
        (account[len(prefix):], delta)
        for account, delta in sorted(account_deltas(postings).items())
        if account.startswith(prefix) and delta
    )


def _money_events(state: WalletState, postings: tuple[Posting, ...]) -> tuple[Event, ...]:
    deltas = _player_deltas(state.player_id, postings)
    return (BalancesChanged(deltas),) if deltas else ()


def _usage(state: WalletState, now_ms: int, *changes: tuple[str, str, int]) -> UsageChanged:
    """Counter deltas for (kind, period, delta); counters of past periods are dropped."""
    deltas = tuple((f"{kind}:{period_key(period, now_ms)}", delta) for kind, period, delta in changes if delta)
    current = {f"{kind}:{period_key(period, now_ms)}" for kind in ("deposit", "bet", "loss") for period in PERIODS}
    current |= {f"{kind}:{period_key('hour', now_ms)}" for kind in ("deposits", "withdrawals")}
    stale = tuple(key for key in state.usage if key not in current)
    return UsageChanged(deltas, stale)


def _used(state: WalletState, kind: str, period: str, now_ms: int) -> int:
    return state.usage.get(f"{kind}:{period_key(period, now_ms)}", 0)


def _exclusion(state: WalletState, ctx: Context) -> Decision | None:
    if state.limits.self_excluded_until_ms > ctx.now_ms:
        return _refuse(state, ctx, WalletResult.SELF_EXCLUDED, "the player is self-excluded",
                       until_ms=state.limits.self_excluded_until_ms)
    if state.limits.cool_off_until_ms > ctx.now_ms:
        return _refuse(state, ctx, WalletResult.COOL_OFF_ACTIVE, "the player is in a cool-off period",
                       until_ms=state.limits.cool_off_until_ms)
    return None


def _limit_check(state: WalletState, ctx: Context, kind: str, amount_minor: int, code: WalletResult) -> Decision | None:
    for period in PERIODS:
        limit = state.limits.effective(f"{kind}:{period}", ctx.now_ms)
        used = _used(state, kind, period, ctx.now_ms)
        if limit is not None and used + amount_minor > limit:
            return _refuse(state, ctx, code, f"the {period}ly {kind} limit would be exceeded",
                           period=period, limit_minor=limit, used_minor=used, requested_minor=amount_minor)
    return None


def _stake_checks(state: WalletState, ctx: Context, stake_minor: int) -> Decision | None:
    """Responsible-gaming checks before any stake is taken."""
    refused = _exclusion(state, ctx)
    if refused is None:
        refused = _limit_check(state, ctx, "bet", stake_minor, WalletResult.BET_LIMIT_EXCEEDED)
    if refused is None:
        refused = _limit_check(state, ctx, "loss", stake_minor, WalletResult.LOSS_LIMIT_EXCEEDED)
    if refused is None:
        session_limit = state.limits.effective("session:minutes", ctx.now_ms)
        started = _session_start(state, ctx.now_ms)
        if session_limit is not None and ctx.now_ms - started >= session_limit * MINUTE_MS:
            refused = _refuse(state, ctx, WalletResult.SESSION_LIMIT_EXCEEDED, "the session time limit is reached",
                              limit_minutes=session_limit, session_started_ms=started)
    return refused


def _session_start(state: WalletState, now_ms: int) -> int:
    if state.last_bet_ms and now_ms - state.last_bet_ms < SESSION_IDLE_MS:
        return state.session_started_ms
    return now_ms


def _take_stake(legs: _Legs, sources: tuple[SpendSource, ...], currency: str) -> None:
    hold = legs.player("HOLD", currency)
    for source in sources:
        if source.via:
            legs.add(legs.player(source.wallet, currency), legs.player(source.via, currency), source.amount_minor,
                     currency, "policy_move")
            legs.add(legs.player(source.via, currency), hold, source.amount_minor, currency, "hold")
        else:
            legs.add(legs.player(source.wallet, currency), hold, source.amount_minor, currency, "hold")


def _hold_sources(sources: tuple[SpendSource, ...]) -> tuple[tuple[str, int], ...]:
    return tuple((s.wallet, s.amount_minor) for s in sources)


def _consume(hold: Hold, amount_minor: int) -> tuple[tuple[str, int], ...]:
    """The hold's remaining sources after capturing amount_minor, front to back."""
    left, out = amount_minor, []
    for wallet, amount in hold.sources:
        take = min(amount, left)
        left -= take
        if amount - take:
            out.append((wallet, amount - take))
    return tuple(out)


def _release_legs(legs: _Legs, hold: Hold, category: str) -> None:
    for wallet, amount in hold.sources:
        legs.add(legs.player("HOLD", hold.currency), legs.player(wallet, hold.currency), amount, hold.currency,
                 category)


def _turnover(state: WalletState, ctx: Context, legs: _Legs, stake_minor: int, currency: str,
              balances_after: dict[str, int]) -> tuple[Event, ...]:
    """Count a settled stake against active bonuses; once every active bonus in the
    currency has met its requirement, the bonus balance converts to cash."""
    active = [b for b in state.bonuses.values() if b.state == "ACTIVE" and b.currency == currency]
    if not active or stake_minor <= 0:
        return ()
    events: list[Event] = []
    left = stake_minor
    updated = []
    for bonus in sorted(active, key=lambda b: (b.expires_at_ms, b.bonus_id)):
        counted = min(left, bonus.wager_required_minor)
        left -= counted
        updated.append(dataclasses.replace(bonus, wager_required_minor=bonus.wager_required_minor - counted))
    if all(b.wager_required_minor == 0 for b in updated):
        convertible = balances_after.get(f"BONUS:{currency}", 0)
        legs.add(legs.player("BONUS", currency), legs.player("CASH", currency), convertible, currency,
                 "bonus_conversion")
        updated = [dataclasses.replace(b, state="CONVERTED", closed_at_ms=ctx.now_ms) for b in updated]
    events.extend(BonusUpdated(b) for b in updated)
    return tuple(events)


# ---------------------------------------------------------------- decide

def claim_of(command: Command) -> str | None:
    """The id a command creates or names, as it is claimed for good in storage: a second
    item may never take an id (its postings' operation ids are derived from it)."""
    if isinstance(command, (RequestDeposit, ApplyPspResult)):
        return f"deposit:{command.deposit_id}"
    if isinstance(command, (PlaceBet, SettleBet, CancelBet)):
        return f"bet:{command.bet_id}"
    if isinstance(command, (CaptureHold, ReleaseHold)):
        return command.hold_id  # bet:{id} or withdrawal:{id}, the claims of what holds
    if isinstance(command, (RequestWithdrawal, ApplyWithdrawalResult)):
        return f"withdrawal:{command.withdrawal_id}"
    if isinstance(command, GrantBonus):
        return f"bonus:{command.bonus_id}"
    if isinstance(command, ConvertFx):
        return f"fx:{command.conversion_id}"
    if isinstance(command, Adjust):
        return f"adjustment:{command.adjustment_id}"
    return None


# Commands whose success takes their claim's id.
CLAIMING = (RequestDeposit, PlaceBet, RequestWithdrawal, GrantBonus, ConvertFx, Adjust)


def decide(state: WalletState, command: Command, ctx: Context) -> Decision:
    recorded = state.operations.get(ctx.operation_key) if ctx.operation_key else None
    if recorded is not None:
        if not same_request(recorded.request_hash, ctx.request_hash):
            return _reject(WalletResult.IDEMPOTENCY_CONFLICT,
                           "this idempotency key was already used with a different request")
        return Decision(Outcome(WalletResult(recorded.code), recorded.body), (), (), replayed=True)

    handler = _HANDLERS.get(type(command))
    if handler is None:
        raise InvariantViolation(f"unknown wallet command {type(command).__name__}")
    if not state.registered and not isinstance(command, (CreatePlayer, Tick)):
        return _reject(WalletResult.PLAYER_NOT_FOUND, "no such player")
    decision = handler(state, command, ctx)
    check_postings(decision.postings)
    if not decision.outcome.ok or not ctx.operation_key:
        return decision
    record = OperationRecord(ctx.request_hash, str(decision.outcome.code), decision.outcome.body, ctx.now_ms)
    rules = ctx.rules
    recorded_event = OperationRecorded(
        ctx.operation_key, record, ctx.now_ms - rules.operation_window_ms, rules.operation_window_count,
        ctx.now_ms - ctx.retention_ms, rules.closed_kept_per_kind,
    )
    return dataclasses.replace(decision, events=decision.events + (recorded_event,))


def already_applied() -> Decision:
    """The decision for a command whose postings' operation ids the ledger holds already
    (told by the agent): it was applied before and its answer is no longer kept."""
    return _reject(WalletResult.OPERATION_ALREADY_APPLIED,
                   "this operation was applied before and its answer is no longer kept")


def _create_player(state: WalletState, cmd: CreatePlayer, ctx: Context) -> Decision:
    body = {"player_id": cmd.player_id, "currency": cmd.currency, "country": cmd.country}
    if state.registered:
        if (state.currency, state.country) == (cmd.currency, cmd.country):
            return Decision(Outcome(WalletResult.CREATED, body))
        return _reject(WalletResult.PLAYER_EXISTS_WITH_DIFFERENT_DETAILS,
                       "the player exists with another currency or country")
    return Decision(Outcome(WalletResult.CREATED, body), (PlayerRegistered(cmd.currency, cmd.country),))


def _set_limits(state: WalletState, cmd: SetLimits, ctx: Context) -> Decision:
    current = state.limits
    if (0 < cmd.cool_off_until_ms < current.cool_off_until_ms
            or 0 < cmd.self_excluded_until_ms < current.self_excluded_until_ms):
        return _reject(WalletResult.CANNOT_SHORTEN_EXCLUSION, "a cool-off or self-exclusion can only be extended")
    values, pending = dict(current.values), dict(current.pending)
    # Settle pending changes that are already in force, then apply the new ones: a lower
    # limit at once, a higher or removed one after the cooling period.
    for key, (value, effective_ms) in list(pending.items()):
        if ctx.now_ms >= effective_ms:
            del pending[key]
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
    requested = [(f"{kind}:{period}", value) for kind, period, value in cmd.amounts]
    if cmd.session_minutes is not None or cmd.clear_session:
        requested.append(("session:minutes", None if cmd.clear_session else cmd.session_minutes))
    for key, value in requested:
        old = values.get(key)
        if value is not None and (old is None or value <= old):
            values[key] = value
            pending.pop(key, None)
        elif value == old:
            pending.pop(key, None)  # asking for the limit in force withdraws a pending change
        elif key not in pending or pending[key][0] != value:
            # Asking again for the same raise must not restart its cooling period.
            pending[key] = (value, ctx.now_ms + ctx.rules.limit_increase_delay_ms)
    limits = Limits(
        values=values, pending=pending,
        cool_off_until_ms=max(current.cool_off_until_ms, cmd.cool_off_until_ms),
        self_excluded_until_ms=max(current.self_excluded_until_ms, cmd.self_excluded_until_ms),
    )
    audit = AuditRecord(ctx.tenant_id, f"{ctx.operation_key}:{ctx.now_ms}:limits", state.player_id, "limits_changed",
                        "limits_set", ctx.now_ms, {"requested": [[k, v] for k, v in requested],
                                                   "cool_off_until_ms": limits.cool_off_until_ms,
                                                   "self_excluded_until_ms": limits.self_excluded_until_ms})
    return Decision(Outcome(WalletResult.OK, limits_view(limits, ctx.now_ms)), (LimitsSet(limits),), (), (audit,))


def _set_status(state: WalletState, cmd: SetPlayerStatus, ctx: Context) -> Decision:
    audit = AuditRecord(ctx.tenant_id, f"{ctx.operation_key}:{ctx.now_ms}:status", state.player_id, "status_changed",
                        "player_status_set", ctx.now_ms, {"kyc_status": cmd.kyc_status, "aml_hold": cmd.aml_hold})
    body = {"player_id": state.player_id, "kyc_status": cmd.kyc_status, "aml_hold": cmd.aml_hold}
    return Decision(Outcome(WalletResult.OK, body), (PlayerStatusSet(cmd.kyc_status, cmd.aml_hold),), (), (audit,))


def _request_deposit(state: WalletState, cmd: RequestDeposit, ctx: Context) -> Decision:
    if cmd.currency != state.currency:
        return _reject(WalletResult.CURRENCY_NOT_SUPPORTED, f"the player's wallets are in {state.currency}")
    if cmd.deposit_id in state.deposits or claim_of(cmd) in ctx.claimed:
        return _reject(WalletResult.DEPOSIT_EXISTS, "a deposit with this id exists under another idempotency key")
    refused = _exclusion(state, ctx) or _limit_check(state, ctx, "deposit", cmd.amount_minor,
                                                     WalletResult.DEPOSIT_LIMIT_EXCEEDED)
    if refused:
        return refused
    if _used(state, "deposits", "hour", ctx.now_ms) >= ctx.rules.max_deposits_per_hour:
        return _refuse(state, ctx, WalletResult.VELOCITY_LIMIT_EXCEEDED, "too many deposits in the last hour",
                       max_per_hour=ctx.rules.max_deposits_per_hour)
    deposit = PendingDeposit(cmd.deposit_id, cmd.amount_minor, cmd.currency, cmd.method, "PENDING")
    usage = _usage(state, ctx.now_ms, *[("deposit", p, cmd.amount_minor) for p in PERIODS], ("deposits", "hour", 1))
    body = {"deposit_id": cmd.deposit_id, "state": "PENDING"}
    return Decision(Outcome(WalletResult.ACCEPTED, body), (DepositUpdated(deposit), usage))


def _apply_psp_result(state: WalletState, cmd: ApplyPspResult, ctx: Context) -> Decision:
    deposit = state.deposits.get(cmd.deposit_id)
    if deposit is None and claim_of(cmd) in ctx.claimed:
        return _reject(WalletResult.DEPOSIT_ALREADY_FINAL, "the deposit is already final")
    if deposit is None:
        return _reject(WalletResult.DEPOSIT_NOT_FOUND, "no such deposit")
    if deposit.state != "PENDING":
        return _reject(WalletResult.DEPOSIT_ALREADY_FINAL, f"the deposit is already {deposit.state}")
    if (cmd.amount_minor, cmd.currency) != (deposit.amount_minor, deposit.currency):
        return _reject(WalletResult.AMOUNT_MISMATCH, "amount or currency differ from the deposit")
    if cmd.status == "FAILED":
        failed = dataclasses.replace(deposit, state="FAILED", closed_at_ms=ctx.now_ms)
        # A deposit that never arrived does not count against the player's deposit limit.
        usage = _usage(state, ctx.now_ms, *[("deposit", p, -deposit.amount_minor) for p in PERIODS])
        body = {"deposit_id": deposit.deposit_id, "state": "FAILED"}
        return Decision(Outcome(WalletResult.OK, body), (DepositUpdated(failed), usage))
    if cmd.fee_minor > cmd.amount_minor:
        return _reject(WalletResult.FEE_EXCEEDS_AMOUNT, "the fee is larger than the deposit")
    legs = _Legs(state, ctx, f"deposit:{deposit.deposit_id}", f"psp {cmd.psp} event {cmd.event_id}")
    cash = legs.player("CASH", deposit.currency)
    legs.add(system_account("PSP_SETTLEMENT", deposit.currency, cmd.psp), cash, deposit.amount_minor,
             deposit.currency, "deposit")
    legs.add(cash, system_account("PSP_FEES", deposit.currency, cmd.psp), cmd.fee_minor, deposit.currency,
             "deposit_fee")
    postings = legs.postings()
    body = {"deposit_id": deposit.deposit_id, "state": "SUCCEEDED", "credited": deposit.amount_minor - cmd.fee_minor}
    events = (DepositUpdated(dataclasses.replace(deposit, state="SUCCEEDED", closed_at_ms=ctx.now_ms)),)
    return Decision(Outcome(WalletResult.OK, body), events + _money_events(state, postings), postings)


def _place_bet(state: WalletState, cmd: PlaceBet, ctx: Context) -> Decision:
    if cmd.currency != state.currency:
        return _reject(WalletResult.CURRENCY_NOT_SUPPORTED, f"the player's wallets are in {state.currency}")
    policy = SPEND_POLICIES.get(cmd.policy)
    if policy is None:
        return _reject(WalletResult.POLICY_NOT_FOUND, f"no spend policy {cmd.policy!r}")
    hold_id = f"bet:{cmd.bet_id}"
    if hold_id in state.holds or hold_id in ctx.claimed:
        return _reject(WalletResult.BET_EXISTS, "a bet with this id exists under another idempotency key")
    refused = _stake_checks(state, ctx, cmd.amount_minor)
    if refused:
        return refused
    sources = plan_spend(state.balances, cmd.currency, cmd.amount_minor, policy)
    if sources is None:
        return _reject(WalletResult.INSUFFICIENT_FUNDS, "the wallets this policy may spend hold too little")
    legs = _Legs(state, ctx, f"bet:{cmd.bet_id}:place", describe(policy, sources))
    _take_stake(legs, sources, cmd.currency)
    postings = legs.postings()
    hold = Hold(hold_id, "bet", cmd.bet_id, cmd.currency, cmd.amount_minor, _hold_sources(sources),
                ctx.now_ms + ctx.rules.bet_hold_ttl_ms, policy.name, cmd.provider)
    events = (
        HoldUpdated(hold),
        _usage(state, ctx.now_ms, *[(k, p, cmd.amount_minor) for k in ("bet", "loss") for p in PERIODS]),
        SessionTouched(_session_start(state, ctx.now_ms), ctx.now_ms),
    ) + _money_events(state, postings)
    body = {"status": "HELD", "bet_id": cmd.bet_id, "hold_id": hold_id,
            "expires_in": ctx.rules.bet_hold_ttl_ms // 1000, "sources": [[s.wallet, s.amount_minor] for s in sources]}
    return Decision(Outcome(WalletResult.CREATED, body), events, postings)


def _bet_hold(state: WalletState, bet_id: str, ctx: Context) -> Hold | Decision:
    hold = state.holds.get(f"bet:{bet_id}")
    if hold is None and f"bet:{bet_id}" in ctx.claimed:
        return _reject(WalletResult.HOLD_NOT_OPEN, "the bet's hold is closed")
    if hold is None:
        return _reject(WalletResult.BET_NOT_FOUND, "no such bet")
    if hold.state == "SETTLED":
        return _reject(WalletResult.BET_ALREADY_SETTLED, "the bet is already settled")
    if not hold.open:
        return _reject(WalletResult.HOLD_NOT_OPEN, f"the bet's hold is {hold.state.lower()}")
    return hold


def _settle_bet(state: WalletState, cmd: SettleBet, ctx: Context) -> Decision:
    hold = _bet_hold(state, cmd.bet_id, ctx)
    if isinstance(hold, Decision):
        return hold
    if (cmd.result == "LOSS") != (cmd.payout_minor == 0):
        return _reject(WalletResult.INVALID_PAYOUT, "a WIN pays a positive payout, a LOSS pays nothing")
    policy = SPEND_POLICIES[hold.policy]
    provider = system_account("PROVIDER_SETTLEMENT", hold.currency, hold.provider)
    legs = _Legs(state, ctx, f"bet:{cmd.bet_id}:settle", f"bet {cmd.result}; winnings to {policy.win_wallet}")
    legs.add(legs.player("HOLD", hold.currency), provider, hold.remaining_minor, hold.currency, "bet_stake")
    legs.add(provider, legs.player(policy.win_wallet, hold.currency), cmd.payout_minor, hold.currency, "bet_win")
    stake = hold.amount_minor
    bonus_events = _turnover(state, ctx, legs, stake, hold.currency, legs.balances_after(state.balances))
    postings = legs.postings()
    settled = dataclasses.replace(hold, sources=(), captured_minor=hold.amount_minor, state="SETTLED",
                                  closed_at_ms=ctx.now_ms)
    usage = _usage(state, ctx.now_ms, *[("loss", p, -cmd.payout_minor) for p in PERIODS])
    cash_delta = dict(_player_deltas(state.player_id, postings)).get(f"CASH:{hold.currency}", 0)
    body = {"status": "SETTLED", "bet_id": cmd.bet_id, "result": cmd.result, "payout": cmd.payout_minor,
            "cash_delta": cash_delta}
    events = (HoldUpdated(settled), usage) + bonus_events + _money_events(state, postings)
    return Decision(Outcome(WalletResult.OK, body), events, postings)


def _cancel_bet(state: WalletState, cmd: CancelBet, ctx: Context) -> Decision:
    hold = _bet_hold(state, cmd.bet_id, ctx)
    if isinstance(hold, Decision):
        return hold
    legs = _Legs(state, ctx, f"bet:{cmd.bet_id}:cancel", "bet cancelled: hold released to its sources")
    _release_legs(legs, hold, "release")
    postings = legs.postings()
    released = dataclasses.replace(hold, sources=(), state="RELEASED", closed_at_ms=ctx.now_ms)
    # A cancelled bet never happened: it does not count against bet or loss limits.
    usage = _usage(state, ctx.now_ms, *[(k, p, -hold.remaining_minor) for k in ("bet", "loss") for p in PERIODS])
    body = {"status": "CANCELLED", "bet_id": cmd.bet_id, "released": hold.remaining_minor}
    return Decision(Outcome(WalletResult.OK, body), (HoldUpdated(released), usage) + _money_events(state, postings),
                    postings)


def _capture_account(hold: Hold, psp: str = "") -> tuple[str, str]:
    if hold.kind == "withdrawal":
        return system_account("PAYOUTS", hold.currency, psp), "withdrawal_payout"
    return system_account("PROVIDER_SETTLEMENT", hold.currency, hold.provider), "bet_stake"


def _capture_hold(state: WalletState, cmd: CaptureHold, ctx: Context) -> Decision:
    hold = state.holds.get(cmd.hold_id)
    if hold is None and cmd.hold_id in ctx.claimed:
        return _reject(WalletResult.HOLD_NOT_OPEN, "the hold is closed")
    if hold is None:
        return _reject(WalletResult.HOLD_NOT_FOUND, "no such hold")
    if not hold.open:
        return _reject(WalletResult.HOLD_NOT_OPEN, f"the hold is {hold.state.lower()}")
    if cmd.amount_minor > hold.remaining_minor:
        return _reject(WalletResult.CAPTURE_EXCEEDS_HOLD, f"only {hold.remaining_minor} is still held")
    account, category = _capture_account(hold)
    captured = hold.captured_minor + cmd.amount_minor
    legs = _Legs(state, ctx, f"hold:{hold.hold_id}:capture:{ctx.operation_key}",
                 f"capture {cmd.amount_minor}; {captured} of {hold.amount_minor} captured")
    legs.add(legs.player("HOLD", hold.currency), account, cmd.amount_minor, hold.currency, category)
    postings = legs.postings()
    sources = _consume(hold, cmd.amount_minor)
    updated = dataclasses.replace(hold, sources=sources, captured_minor=captured,
                                  state="HELD" if sources else "CAPTURED",
                                  closed_at_ms=0 if sources else ctx.now_ms)
    body = {"hold_id": hold.hold_id, "captured": captured, "remaining": updated.remaining_minor,
            "state": updated.state}
    return Decision(Outcome(WalletResult.OK, body), (HoldUpdated(updated),) + _money_events(state, postings), postings)


def _release_hold(state: WalletState, cmd: ReleaseHold, ctx: Context) -> Decision:
    hold = state.holds.get(cmd.hold_id)
    if hold is None and cmd.hold_id in ctx.claimed:
        return _reject(WalletResult.HOLD_NOT_OPEN, "the hold is closed")
    if hold is None:
        return _reject(WalletResult.HOLD_NOT_FOUND, "no such hold")
    if not hold.open:
        return _reject(WalletResult.HOLD_NOT_OPEN, f"the hold is {hold.state.lower()}")
    legs = _Legs(state, ctx, f"hold:{hold.hold_id}:release", "hold released to its sources")
    _release_legs(legs, hold, "release")
    postings = legs.postings()
    updated = dataclasses.replace(hold, sources=(), state="RELEASED", closed_at_ms=ctx.now_ms)
    events: tuple[Event, ...] = (HoldUpdated(updated),)
    if hold.kind == "withdrawal":
        w = state.withdrawals[hold.ref]
        events += (WithdrawalUpdated(dataclasses.replace(w, state="FAILED", closed_at_ms=ctx.now_ms)),)
    body = {"hold_id": hold.hold_id, "released": hold.remaining_minor, "state": "RELEASED"}
    return Decision(Outcome(WalletResult.OK, body), events + _money_events(state, postings), postings)


def _request_withdrawal(state: WalletState, cmd: RequestWithdrawal, ctx: Context) -> Decision:
    if cmd.currency != state.currency:
        return _reject(WalletResult.CURRENCY_NOT_SUPPORTED, f"the player's wallets are in {state.currency}")
    if cmd.withdrawal_id in state.withdrawals or claim_of(cmd) in ctx.claimed:
        return _reject(WalletResult.WITHDRAWAL_EXISTS, "a withdrawal with this id exists under another key")
    if state.kyc_status != "VERIFIED":
        return _refuse(state, ctx, WalletResult.KYC_REQUIRED, "withdrawals need a verified identity",
                       kyc_status=state.kyc_status)
    if state.aml_hold:
        return _refuse(state, ctx, WalletResult.AML_HOLD, "the account is under an AML review")
    if cmd.destination and cmd.destination in ctx.rules.blocked_destinations:
        return _refuse(state, ctx, WalletResult.DESTINATION_BLOCKED, "the payout destination is blocked")
    if _used(state, "withdrawals", "hour", ctx.now_ms) >= ctx.rules.max_withdrawals_per_hour:
        return _refuse(state, ctx, WalletResult.VELOCITY_LIMIT_EXCEEDED, "too many withdrawals in the last hour",
                       max_per_hour=ctx.rules.max_withdrawals_per_hour)
    if state.balance("CASH", cmd.currency) < cmd.amount_minor:
        return _reject(WalletResult.INSUFFICIENT_FUNDS, "the cash wallet holds too little")
    hold_id = f"withdrawal:{cmd.withdrawal_id}"
    legs = _Legs(state, ctx, f"withdrawal:{cmd.withdrawal_id}:hold", "withdrawal: cash held until the PSP answers")
    legs.add(legs.player("CASH", cmd.currency), legs.player("HOLD", cmd.currency), cmd.amount_minor, cmd.currency,
             "hold")
    postings = legs.postings()
    hold = Hold(hold_id, "withdrawal", cmd.withdrawal_id, cmd.currency, cmd.amount_minor,
                (("CASH", cmd.amount_minor),), ctx.now_ms + ctx.rules.withdrawal_hold_ttl_ms, "cash")
    withdrawal = Withdrawal(cmd.withdrawal_id, cmd.amount_minor, cmd.currency, cmd.method, cmd.destination,
                            "PENDING", hold_id, ctx.now_ms)
    body = {"withdrawal_id": cmd.withdrawal_id, "state": "PENDING",
            "status_url": f"/v1/withdrawals/{cmd.withdrawal_id}"}
    events = (HoldUpdated(hold), WithdrawalUpdated(withdrawal), _usage(state, ctx.now_ms, ("withdrawals", "hour", 1)))
    return Decision(Outcome(WalletResult.ACCEPTED, body), events + _money_events(state, postings), postings)


def _apply_withdrawal_result(state: WalletState, cmd: ApplyWithdrawalResult, ctx: Context) -> Decision:
    withdrawal = state.withdrawals.get(cmd.withdrawal_id)
    if withdrawal is None and claim_of(cmd) in ctx.claimed:
        return _reject(WalletResult.WITHDRAWAL_ALREADY_FINAL, "the withdrawal is already final")
    if withdrawal is None:
        return _reject(WalletResult.WITHDRAWAL_NOT_FOUND, "no such withdrawal")
    hold = state.holds.get(withdrawal.hold_id)
    if withdrawal.state != "PENDING" or hold is None or not hold.open:
        return _reject(WalletResult.WITHDRAWAL_ALREADY_FINAL, f"the withdrawal is already {withdrawal.state}")
    if (cmd.amount_minor, cmd.currency) != (withdrawal.amount_minor, withdrawal.currency):
        return _reject(WalletResult.AMOUNT_MISMATCH, "amount or currency differ from the withdrawal")
    if cmd.fee_minor > cmd.amount_minor:
        return _reject(WalletResult.FEE_EXCEEDS_AMOUNT, "the fee is larger than the withdrawal")
    legs = _Legs(state, ctx, f"withdrawal:{cmd.withdrawal_id}:{cmd.status.lower()}",
                 f"psp {cmd.psp} event {cmd.event_id}")
    held = legs.player("HOLD", hold.currency)
    if cmd.status == "SUCCEEDED":
        legs.add(held, system_account("PAYOUTS", hold.currency, cmd.psp), hold.remaining_minor - cmd.fee_minor,
                 hold.currency, "withdrawal_payout")
        legs.add(held, system_account("PSP_FEES", hold.currency, cmd.psp), cmd.fee_minor, hold.currency,
                 "withdrawal_fee")
        new_hold = dataclasses.replace(hold, sources=(), captured_minor=hold.amount_minor, state="CAPTURED",
                                       closed_at_ms=ctx.now_ms)
    else:
        _release_legs(legs, hold, "release")
        new_hold = dataclasses.replace(hold, sources=(), state="RELEASED", closed_at_ms=ctx.now_ms)
    postings = legs.postings()
    final = dataclasses.replace(withdrawal, state=cmd.status, closed_at_ms=ctx.now_ms)
    body = {"withdrawal_id": withdrawal.withdrawal_id, "state": cmd.status}
    events = (HoldUpdated(new_hold), WithdrawalUpdated(final)) + _money_events(state, postings)
    return Decision(Outcome(WalletResult.OK, body), events, postings)


def _grant_bonus(state: WalletState, cmd: GrantBonus, ctx: Context) -> Decision:
    if cmd.currency != state.currency:
        return _reject(WalletResult.CURRENCY_NOT_SUPPORTED, f"the player's wallets are in {state.currency}")
    if cmd.bonus_id in state.bonuses or claim_of(cmd) in ctx.claimed:
        return _reject(WalletResult.BONUS_EXISTS, "a bonus with this id exists under another idempotency key")
    legs = _Legs(state, ctx, f"bonus:{cmd.bonus_id}:grant",
                 f"bonus grant; wager {cmd.wager_required_minor} before conversion")
    legs.add(system_account("ADJUSTMENTS", cmd.currency, "bonus"), legs.player("BONUS", cmd.currency),
             cmd.amount_minor, cmd.currency, "bonus_grant")
    postings = legs.postings()
    bonus = Bonus(cmd.bonus_id, cmd.currency, cmd.amount_minor, cmd.wager_required_minor, cmd.expires_at_ms, "ACTIVE")
    body = {"bonus_id": cmd.bonus_id, "state": "ACTIVE", "amount": cmd.amount_minor,
            "wager_required": cmd.wager_required_minor}
    return Decision(Outcome(WalletResult.CREATED, body), (BonusUpdated(bonus),) + _money_events(state, postings),
                    postings)


def fx_convert_amount(amount_minor: int, rate: Decimal, from_currency: str, to_currency: str) -> tuple[int, Decimal]:
    """(rounded minor units of to_currency, residue) with banker's rounding. The rate is
    in major units; the exponent difference scales minor units between currencies."""
    scale = Decimal(10) ** (minor_exponent(to_currency) - minor_exponent(from_currency))
    exact = Decimal(amount_minor) * rate * scale
    rounded = exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return int(rounded), exact - rounded


def _decimal_text(value: Decimal) -> str:
    """Plain notation without trailing zeros: 1.333330000000 -> 1.33333, 1E-7 -> 0.0000001."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "0") else text


def _convert_fx(state: WalletState, cmd: ConvertFx, ctx: Context) -> Decision:
    if cmd.from_currency == cmd.to_currency:
        return _reject(WalletResult.SAME_CURRENCY, "from and to currency are the same")
    if claim_of(cmd) in ctx.claimed:
        return _reject(WalletResult.CONVERSION_EXISTS, "a conversion with this id exists under another idempotency key")
    try:
        rate = Decimal(cmd.rate)
    except InvalidOperation:
        return _reject(WalletResult.INVALID_RATE, f"rate {cmd.rate!r} is not a decimal number")
    if not rate.is_finite() or rate <= 0:
        return _reject(WalletResult.INVALID_RATE, "the rate must be positive")
    if state.balance(cmd.wallet, cmd.from_currency) < cmd.amount_minor:
        return _reject(WalletResult.INSUFFICIENT_FUNDS, f"the {cmd.wallet} wallet holds too little")
    converted, residue = fx_convert_amount(cmd.amount_minor, rate, cmd.from_currency, cmd.to_currency)
    if converted <= 0 or converted > MAX_AMOUNT_MINOR:
        return _reject(WalletResult.AMOUNT_TOO_SMALL, "the converted amount rounds to nothing or is out of range")
    fx = f"FX_{cmd.from_currency}{cmd.to_currency}"
    # The residue (exact minus rounded, in minor units of the target) is booked on the
    # postings' reason and in the response, never dropped silently.
    rate_text, residue_text = _decimal_text(rate), _decimal_text(residue)
    reason = f"rate {rate_text} valid_from_ms {cmd.rate_valid_from_ms} residue {residue_text} {cmd.to_currency} minor"
    legs = _Legs(state, ctx, f"fx:{cmd.conversion_id}", reason)
    legs.add(legs.player(cmd.wallet, cmd.from_currency), system_account(fx, cmd.from_currency), cmd.amount_minor,
             cmd.from_currency, "fx_out")
    legs.add(system_account(fx, cmd.to_currency), legs.player(cmd.wallet, cmd.to_currency), converted,
             cmd.to_currency, "fx_in")
    postings = legs.postings()
    body = {"conversion_id": cmd.conversion_id, "debited": cmd.amount_minor, "credited": converted,
            "from_currency": cmd.from_currency, "to_currency": cmd.to_currency, "rate": rate_text,
            "residue_minor": residue_text}
    return Decision(Outcome(WalletResult.OK, body), _money_events(state, postings), postings)


def _adjust(state: WalletState, cmd: Adjust, ctx: Context) -> Decision:
    if claim_of(cmd) in ctx.claimed:
        return _reject(WalletResult.ADJUSTMENT_EXISTS, "an adjustment with this id exists under another idempotency key")
    if cmd.amount_minor < 0 and state.balance(cmd.wallet, cmd.currency) < -cmd.amount_minor:
        return _reject(WalletResult.INSUFFICIENT_FUNDS, f"the {cmd.wallet} wallet holds too little")
    legs = _Legs(state, ctx, f"adjustment:{cmd.adjustment_id}", cmd.reason)
    system, wallet = system_account("ADJUSTMENTS", cmd.currency), legs.player(cmd.wallet, cmd.currency)
    if cmd.amount_minor > 0:
        legs.add(system, wallet, cmd.amount_minor, cmd.currency, "adjustment")
    else:
        legs.add(wallet, system, -cmd.amount_minor, cmd.currency, "adjustment")
    postings = legs.postings()
    audit = AuditRecord(ctx.tenant_id, f"adjustment:{cmd.adjustment_id}", state.player_id, "adjustment",
                        "adjustment_posted", ctx.now_ms, {"wallet": cmd.wallet, "currency": cmd.currency,
                                                          "amount_minor": cmd.amount_minor, "reason": cmd.reason})
    body = {"adjustment_id": cmd.adjustment_id, "wallet": cmd.wallet, "amount": cmd.amount_minor}
    return Decision(Outcome(WalletResult.CREATED, body), _money_events(state, postings), postings, (audit,))


def _play_round(state: WalletState, cmd: PlayRound, ctx: Context) -> Decision:
    if cmd.currency != state.currency:
        return _reject(WalletResult.CURRENCY_NOT_SUPPORTED, f"the player's wallets are in {state.currency}")
    policy = SPEND_POLICIES.get(cmd.policy)
    if policy is None:
        return _reject(WalletResult.POLICY_NOT_FOUND, f"no spend policy {cmd.policy!r}")
    sources: tuple[SpendSource, ...] = ()
    if cmd.bet_minor:
        refused = _stake_checks(state, ctx, cmd.bet_minor)
        if refused:
            return refused
        planned = plan_spend(state.balances, cmd.currency, cmd.bet_minor, policy)
        if planned is None:
            return _reject(WalletResult.INSUFFICIENT_FUNDS, "the wallets this policy may spend hold too little")
        sources = planned
    provider = system_account("PROVIDER_SETTLEMENT", cmd.currency, cmd.provider)
    # The player is in the operation id: a provider's round (a live table's spin) may be
    # shared by many players, and the ledger keeps one posting per operation id and leg.
    legs = _Legs(state, ctx, f"round:{cmd.provider}:{cmd.round_id}:{state.player_id}",
                 describe(policy, sources) if sources else f"policy {policy.name}: no stake")
    _take_stake(legs, sources, cmd.currency)
    legs.add(legs.player("HOLD", cmd.currency), provider, cmd.bet_minor, cmd.currency, "bet_stake")
    legs.add(provider, legs.player(policy.win_wallet, cmd.currency), cmd.win_minor, cmd.currency, "bet_win")
    bonus_events = _turnover(state, ctx, legs, cmd.bet_minor, cmd.currency, legs.balances_after(state.balances))
    postings = legs.postings()
    usage = _usage(state, ctx.now_ms, *[("bet", p, cmd.bet_minor) for p in PERIODS],
                   *[("loss", p, cmd.bet_minor - cmd.win_minor) for p in PERIODS])
    events: tuple[Event, ...] = (usage,)
    if cmd.bet_minor:
        events += (SessionTouched(_session_start(state, ctx.now_ms), ctx.now_ms),)
    cash_delta = dict(_player_deltas(state.player_id, postings)).get(f"CASH:{cmd.currency}", 0)
    body = {"round_id": cmd.round_id, "status": "SETTLED", "bet": cmd.bet_minor, "win": cmd.win_minor,
            "cash_delta": cash_delta}
    return Decision(Outcome(WalletResult.OK, body), events + bonus_events + _money_events(state, postings), postings)


# A jackpot credit refused with one of these may succeed later (the hold is lifted), so the
# pool retries it; any other refusal stays failed until an operator acts.
RETRYABLE_JACKPOT_REFUSALS = frozenset({WalletResult.AML_HOLD})


def _credit_jackpot(state: WalletState, cmd: CreditJackpot, ctx: Context) -> Decision:
    if cmd.currency != state.currency:
        return _reject(WalletResult.CURRENCY_NOT_SUPPORTED, f"the player's wallets are in {state.currency}")
    if state.aml_hold:
        # Winnings are owed whatever else holds for the player (a self-exclusion that began
        # after the round does not void a win), but nothing is paid while AML holds it.
        return _refuse(state, ctx, WalletResult.AML_HOLD, "the player's account is on AML hold",
                       pool_id=cmd.pool_id, trigger_id=cmd.trigger_id, amount_minor=cmd.amount_minor)
    legs = _Legs(state, ctx, ctx.operation_key,
                 f"jackpot {cmd.pool_id} tier {cmd.tier} trigger {cmd.trigger_id} round {cmd.round_id}")
    legs.add(system_account("PAYOUTS", cmd.currency, "jackpot"), legs.player("CASH", cmd.currency),
             cmd.amount_minor, cmd.currency, "jp_win")
    postings = legs.postings()
    body = {"payout_key": ctx.operation_key, "pool_id": cmd.pool_id, "trigger_id": cmd.trigger_id,
            "tier": cmd.tier, "amount": cmd.amount_minor, "currency": cmd.currency, "state": "CREDITED"}
    return Decision(Outcome(WalletResult.CREATED, body), _money_events(state, postings), postings)


def _tick(state: WalletState, cmd: Tick, ctx: Context) -> Decision:
    """Release every open hold past its expiry and forfeit every bonus past its own."""
    legs = _Legs(state, ctx, f"expiry:{state.player_id}:{ctx.now_ms}", "expired")
    events: list[Event] = []
    expired_holds = []
    for hold in sorted(state.holds.values(), key=lambda h: h.hold_id):
        if hold.open and hold.expires_at_ms <= ctx.now_ms:
            _release_legs(legs, hold, "hold_expired")
            events.append(HoldUpdated(dataclasses.replace(hold, sources=(), state="EXPIRED", closed_at_ms=ctx.now_ms)))
            expired_holds.append(hold.hold_id)
            if hold.kind == "withdrawal":
                w = state.withdrawals[hold.ref]
                events.append(WithdrawalUpdated(dataclasses.replace(w, state="EXPIRED", closed_at_ms=ctx.now_ms)))
    forfeited = []
    bonus_left = {c: state.balance("BONUS", c) for c in {b.currency for b in state.bonuses.values()}}
    for bonus in sorted(state.bonuses.values(), key=lambda b: b.bonus_id):
        if bonus.state == "ACTIVE" and bonus.expires_at_ms <= ctx.now_ms:
            amount = min(bonus.amount_minor, bonus_left[bonus.currency])
            bonus_left[bonus.currency] -= amount
            legs.add(legs.player("BONUS", bonus.currency), system_account("ADJUSTMENTS", bonus.currency, "bonus"),
                     amount, bonus.currency, "bonus_forfeit")
            events.append(BonusUpdated(dataclasses.replace(bonus, state="FORFEITED", closed_at_ms=ctx.now_ms)))
            forfeited.append(bonus.bonus_id)
    postings = legs.postings()
    body = {"expired_holds": expired_holds, "forfeited_bonuses": forfeited}
    return Decision(Outcome(WalletResult.OK, body), tuple(events) + _money_events(state, postings), postings)


_HANDLERS: dict[type, Callable[[WalletState, object, Context], Decision]] = {
    CreatePlayer: _create_player, SetLimits: _set_limits, SetPlayerStatus: _set_status,
    RequestDeposit: _request_deposit, ApplyPspResult: _apply_psp_result, PlaceBet: _place_bet,
    SettleBet: _settle_bet, CancelBet: _cancel_bet, CaptureHold: _capture_hold, ReleaseHold: _release_hold,
    RequestWithdrawal: _request_withdrawal, ApplyWithdrawalResult: _apply_withdrawal_result,
    GrantBonus: _grant_bonus, ConvertFx: _convert_fx, Adjust: _adjust, PlayRound: _play_round,
    CreditJackpot: _credit_jackpot, Tick: _tick,
}


# ---------------------------------------------------------------- evolve

def evolve(state: WalletState, events: tuple[Event, ...]) -> WalletState:
    if not events:
        return state
    changes: dict = {}
    balances = dict(state.balances)
    deposits, holds = dict(state.deposits), dict(state.holds)
    withdrawals, bonuses, usage = dict(state.withdrawals), dict(state.bonuses), dict(state.usage)
    operations = state.operations
    for event in events:
        if isinstance(event, PlayerRegistered):
            changes.update(registered=True, currency=event.currency, country=event.country)
            for wallet_type in PLAYER_WALLETS:
                balances.setdefault(f"{wallet_type}:{event.currency}", 0)
        elif isinstance(event, DepositUpdated):
            deposits[event.deposit.deposit_id] = event.deposit
        elif isinstance(event, HoldUpdated):
            holds[event.hold.hold_id] = event.hold
        elif isinstance(event, WithdrawalUpdated):
            withdrawals[event.withdrawal.withdrawal_id] = event.withdrawal
        elif isinstance(event, BonusUpdated):
            bonuses[event.bonus.bonus_id] = event.bonus
        elif isinstance(event, LimitsSet):
            changes["limits"] = event.limits
        elif isinstance(event, PlayerStatusSet):
            changes.update(kyc_status=event.kyc_status, aml_hold=event.aml_hold)
        elif isinstance(event, UsageChanged):
            for key in event.stale:
                usage.pop(key, None)
            for key, delta in event.deltas:
                value = usage.get(key, 0) + delta
                # Net loss may go below zero (the player is up); a count or a sum of
                # deposits or stakes cannot, even when a reversal lands in a later period.
                usage[key] = value if key.startswith("loss:") else max(value, 0)
        elif isinstance(event, SessionTouched):
            changes.update(session_started_ms=event.started_ms, last_bet_ms=event.last_bet_ms)
        elif isinstance(event, BalancesChanged):
            for key, delta in event.deltas:
                balances[key] = balances.get(key, 0) + delta
        elif isinstance(event, OperationRecorded):
            operations = _window(operations, event)
            for table in (deposits, holds, withdrawals, bonuses):
                _trim_closed(table, event.closed_before_ms, event.keep_closed)
        else:
            raise InvariantViolation(f"unknown wallet event {type(event).__name__}")
    new_state = dataclasses.replace(
        state, balances=balances, deposits=deposits, holds=holds, withdrawals=withdrawals, bonuses=bonuses,
        usage=usage, operations=operations, version=state.version + 1, **changes,
    )
    check_wallet(new_state)
    return new_state


def _window(operations: dict[str, OperationRecord], event: OperationRecorded) -> dict[str, OperationRecord]:
    """The operations window once the event's operation joins it. Received times come
    from several web processes, so they are not in order: the newest by time are kept."""
    kept = [(k, v) for k, v in operations.items() if v.at_ms >= event.prune_before_ms and k != event.key]
    if len(kept) >= event.keep_operations:
        kept.sort(key=lambda item: item[1].at_ms)
        kept = kept[len(kept) - event.keep_operations + 1:] if event.keep_operations > 1 else []
    window = dict(kept)
    window[event.key] = event.record
    return window


def _trim_closed(table: dict, closed_before_ms: int, keep: int) -> None:
    """Drop closed items closed before the cutoff, and all but the newest `keep` closed."""
    closed = sorted((v.closed_at_ms, k) for k, v in table.items() if v.closed_at_ms > 0)
    old = {k for at_ms, k in closed if at_ms < closed_before_ms}
    surplus = {k for _, k in closed[:max(0, len(closed) - keep)]}
    for key in old | surplus:
        del table[key]


def check_wallet(state: WalletState) -> None:
    """Invariants of one wallet record; a failure is a bug in decide, never bad input."""
    for key, amount in state.balances.items():
        if amount < 0:
            raise InvariantViolation(f"wallet {state.player_id} {key} is negative: {amount}")
    held: dict[str, int] = {}
    for hold in state.holds.values():
        if hold.open:
            held[hold.currency] = held.get(hold.currency, 0) + hold.remaining_minor
        elif hold.sources:
            raise InvariantViolation(f"closed hold {hold.hold_id} still holds {hold.sources}")
    for key, amount in state.balances.items():
        wallet, currency = key.split(":")
        if wallet == "HOLD" and amount != held.get(currency, 0):
            raise InvariantViolation(f"HOLD:{currency} is {amount} but open holds total {held.get(currency, 0)}")


# ---------------------------------------------------------------- reads

def wallet_view(state: WalletState, types: tuple[str, ...] | None = None) -> dict:
    held: dict[str, int] = {}
    for hold in state.holds.values():
        if hold.open:
            for wallet, amount in hold.sources:
                held[f"{wallet}:{hold.currency}"] = held.get(f"{wallet}:{hold.currency}", 0) + amount
    wager_required: dict[str, int] = {}
    for bonus in state.bonuses.values():
        if bonus.state == "ACTIVE":
            wager_required[bonus.currency] = wager_required.get(bonus.currency, 0) + bonus.wager_required_minor
    currencies = sorted({key.split(":")[1] for key in state.balances}, key=lambda c: (c != state.currency, c))
    wallets = []
    for currency in currencies:
        for wallet_type in PLAYER_WALLETS:
            key = f"{wallet_type}:{currency}"
            if (types and wallet_type not in types) or key not in state.balances:
                continue
            entry = {"type": wallet_type, "currency": currency, "available": state.balances[key],
                     "held": held.get(key, 0), "version": state.version}
            if wallet_type == "BONUS":
                entry["wager_required"] = wager_required.get(currency, 0)
            wallets.append(entry)
    return {"player_id": state.player_id, "wallets": wallets, "version": state.version}


def limits_view(limits: Limits, now_ms: int) -> dict:
    keys = sorted(set(limits.values) | set(limits.pending))
    return {
        "limits": {key: limits.effective(key, now_ms) for key in keys},
        "pending": {key: {"value": value, "effective_from_ms": at} for key, (value, at) in limits.pending.items()
                    if at > now_ms},
        "cool_off_until_ms": limits.cool_off_until_ms,
        "self_excluded_until_ms": limits.self_excluded_until_ms,
    }


def withdrawal_view(withdrawal: Withdrawal) -> dict:
    return {"withdrawal_id": withdrawal.withdrawal_id, "state": withdrawal.state, "amount": withdrawal.amount_minor,
            "currency": withdrawal.currency, "method": withdrawal.method}
