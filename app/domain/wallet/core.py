"""The wallet aggregate: one record per (tenant, player) holding balances, pending
deposits and recent operation ids, so a single changelog write carries all of them.

    decide(state, command, ctx) -> Decision(result, events, postings)
    evolve(state, events) -> state

Both are pure: time and retention come in through ``ctx``; nothing here awaits or reads
a clock. Replaying a command whose operation id is already recorded returns the
recorded result and re-emits the recorded postings, because the first run's outputs may
never have left the process (at-least-once delivery; the ledger dedupes on
(operation_id, leg)).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Union

from app.domain.errors import InvariantViolation
from app.domain.ledger import (
    WALLET_TYPES,
    Posting,
    account_deltas,
    check_postings,
    player_account,
    system_account,
)

PLAYER_WALLETS = tuple(t for t in WALLET_TYPES if t != "HOLD")


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


SUCCESS = frozenset({WalletResult.CREATED, WalletResult.ACCEPTED, WalletResult.OK})


# ---------------------------------------------------------------- state

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


@dataclass(frozen=True, slots=True)
class WalletState:
    tenant_id: str
    player_id: str
    registered: bool = False
    currency: str = ""
    country: str = ""
    # "CASH:EUR" -> available minor units. Every player wallet exists from registration.
    balances: dict[str, int] = field(default_factory=dict)
    deposits: dict[str, PendingDeposit] = field(default_factory=dict)
    operations: dict[str, OperationRecord] = field(default_factory=dict)
    version: int = 0

    @classmethod
    def empty(cls, tenant_id: str, player_id: str) -> "WalletState":
        return cls(tenant_id=tenant_id, player_id=player_id)

    def balance(self, wallet_type: str, currency: str) -> int:
        return self.balances.get(f"{wallet_type}:{currency}", 0)


# ---------------------------------------------------------------- commands

@dataclass(frozen=True, slots=True)
class CreatePlayer:
    player_id: str
    currency: str
    country: str


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


Command = Union[CreatePlayer, RequestDeposit, ApplyPspResult]


@dataclass(frozen=True, slots=True)
class Context:
    """Everything a decision needs from outside: passed in, never read inside."""

    tenant_id: str
    operation_key: str  # idempotency key, scoped to the tenant
    request_hash: str
    now_ms: int
    retention_ms: int


# ---------------------------------------------------------------- events

@dataclass(frozen=True, slots=True)
class PlayerRegistered:
    currency: str
    country: str


@dataclass(frozen=True, slots=True)
class DepositRequested:
    deposit: PendingDeposit


@dataclass(frozen=True, slots=True)
class DepositSettled:
    deposit_id: str
    state: str


@dataclass(frozen=True, slots=True)
class BalancesChanged:
    deltas: tuple[tuple[str, int], ...]  # ("CASH:EUR", +1000)


@dataclass(frozen=True, slots=True)
class OperationRecorded:
    key: str
    record: OperationRecord
    prune_before_ms: int


Event = Union[PlayerRegistered, DepositRequested, DepositSettled, BalancesChanged, OperationRecorded]


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
    events: tuple[Event, ...]
    postings: tuple[Posting, ...]
    replayed: bool = False


# ---------------------------------------------------------------- decide

def _reject(code: WalletResult, message: str) -> Outcome:
    return Outcome(code, {"error": {"code": str(code), "message": message}})


def decide(state: WalletState, command: Command, ctx: Context) -> Decision:
    recorded = state.operations.get(ctx.operation_key)
    if recorded is not None:
        if recorded.request_hash != ctx.request_hash:
            outcome = _reject(
                WalletResult.IDEMPOTENCY_CONFLICT,
                "this idempotency key was already used with a different request",
            )
            return Decision(outcome, (), ())
        return Decision(Outcome(WalletResult(recorded.code), recorded.body), (), recorded.postings, replayed=True)

    if isinstance(command, CreatePlayer):
        outcome, events, postings = _create_player(state, command)
    elif isinstance(command, RequestDeposit):
        outcome, events, postings = _request_deposit(state, command)
    elif isinstance(command, ApplyPspResult):
        outcome, events, postings = _apply_psp_result(state, command, ctx)
    else:
        raise InvariantViolation(f"unknown wallet command {type(command).__name__}")

    check_postings(postings)
    if not outcome.ok:
        # A rejection changes nothing, not even the record of operation ids: a retry is
        # decided again, which is safe because a rejection moved no money.
        return Decision(outcome, (), ())
    record = OperationRecord(ctx.request_hash, str(outcome.code), outcome.body, ctx.now_ms, postings)
    events = events + (OperationRecorded(ctx.operation_key, record, ctx.now_ms - ctx.retention_ms),)
    return Decision(outcome, events, postings)


def _create_player(state: WalletState, cmd: CreatePlayer):
    body = {"player_id": cmd.player_id, "currency": cmd.currency, "country": cmd.country}
    if state.registered:
        if (state.currency, state.country) == (cmd.currency, cmd.country):
            return Outcome(WalletResult.CREATED, body), (), ()
        return (
            _reject(WalletResult.PLAYER_EXISTS_WITH_DIFFERENT_DETAILS, "the player exists with another currency or country"),
            (),
            (),
        )
    return Outcome(WalletResult.CREATED, body), (PlayerRegistered(cmd.currency, cmd.country),), ()


def _request_deposit(state: WalletState, cmd: RequestDeposit):
    if not state.registered:
        return _reject(WalletResult.PLAYER_NOT_FOUND, "no such player"), (), ()
    if cmd.currency != state.currency:
        return _reject(WalletResult.CURRENCY_NOT_SUPPORTED, f"the player's wallets are in {state.currency}"), (), ()
    if cmd.deposit_id in state.deposits:
        return _reject(WalletResult.DEPOSIT_EXISTS, "a deposit with this id exists under another idempotency key"), (), ()
    deposit = PendingDeposit(cmd.deposit_id, cmd.amount_minor, cmd.currency, cmd.method, "PENDING")
    body = {"deposit_id": cmd.deposit_id, "state": "PENDING"}
    return Outcome(WalletResult.ACCEPTED, body), (DepositRequested(deposit),), ()


def _apply_psp_result(state: WalletState, cmd: ApplyPspResult, ctx: Context):
    deposit = state.deposits.get(cmd.deposit_id)
    if deposit is None:
        return _reject(WalletResult.DEPOSIT_NOT_FOUND, "no such deposit"), (), ()
    if deposit.state != "PENDING":
        return _reject(WalletResult.DEPOSIT_ALREADY_FINAL, f"the deposit is already {deposit.state}"), (), ()
    if (cmd.amount_minor, cmd.currency) != (deposit.amount_minor, deposit.currency):
        return _reject(WalletResult.AMOUNT_MISMATCH, "amount or currency differ from the deposit"), (), ()
    if cmd.status == "FAILED":
        body = {"deposit_id": deposit.deposit_id, "state": "FAILED"}
        return Outcome(WalletResult.OK, body), (DepositSettled(deposit.deposit_id, "FAILED"),), ()
    if cmd.fee_minor > cmd.amount_minor:
        return _reject(WalletResult.FEE_EXCEEDS_AMOUNT, "the fee is larger than the deposit"), (), ()

    cash = player_account(state.player_id, "CASH", deposit.currency)
    operation_id = f"deposit:{deposit.deposit_id}"
    legs = [
        (system_account("PSP_SETTLEMENT", deposit.currency, cmd.psp), cash, deposit.amount_minor, "deposit"),
    ]
    if cmd.fee_minor:
        legs.append((cash, system_account("PSP_FEES", deposit.currency, cmd.psp), cmd.fee_minor, "deposit_fee"))
    postings = tuple(
        Posting(
            tenant_id=ctx.tenant_id,
            operation_id=operation_id,
            leg=i,
            debit_account=debit,
            credit_account=credit,
            amount_minor=amount,
            currency=deposit.currency,
            category=category,
            created_at_ms=ctx.now_ms,
            reason=f"psp {cmd.psp} event {cmd.event_id}",
            player_id=state.player_id,
        )
        for i, (debit, credit, amount, category) in enumerate(legs)
    )
    net_minor = deposit.amount_minor - cmd.fee_minor
    body = {"deposit_id": deposit.deposit_id, "state": "SUCCEEDED", "credited": net_minor}
    events = (
        DepositSettled(deposit.deposit_id, "SUCCEEDED"),
        BalancesChanged(_player_deltas(state.player_id, postings)),
    )
    return Outcome(WalletResult.OK, body), events, postings


def _player_deltas(player_id: str, postings: tuple[Posting, ...]) -> tuple[tuple[str, int], ...]:
    prefix = f"player:{player_id}:"
    out = []
    for account, delta in sorted(account_deltas(postings).items()):
        if account.startswith(prefix) and delta:
            out.append((account[len(prefix):], delta))
    return tuple(out)


# ---------------------------------------------------------------- evolve

def evolve(state: WalletState, events: tuple[Event, ...]) -> WalletState:
    if not events:
        return state
    balances = dict(state.balances)
    deposits = dict(state.deposits)
    operations = state.operations
    registered, currency, country = state.registered, state.currency, state.country
    for event in events:
        if isinstance(event, PlayerRegistered):
            registered, currency, country = True, event.currency, event.country
            for wallet_type in PLAYER_WALLETS:
                balances.setdefault(f"{wallet_type}:{currency}", 0)
        elif isinstance(event, DepositRequested):
            deposits[event.deposit.deposit_id] = event.deposit
        elif isinstance(event, DepositSettled):
            deposits[event.deposit_id] = dataclasses.replace(deposits[event.deposit_id], state=event.state)
        elif isinstance(event, BalancesChanged):
            for key, delta in event.deltas:
                balances[key] = balances.get(key, 0) + delta
        elif isinstance(event, OperationRecorded):
            operations = {k: v for k, v in operations.items() if v.at_ms >= event.prune_before_ms}
            operations[event.key] = event.record
        else:
            raise InvariantViolation(f"unknown wallet event {type(event).__name__}")
    new_state = dataclasses.replace(
        state,
        registered=registered,
        currency=currency,
        country=country,
        balances=balances,
        deposits=deposits,
        operations=operations,
        version=state.version + 1,
    )
    check_wallet(new_state)
    return new_state


def check_wallet(state: WalletState) -> None:
    """Invariants of one wallet record; a failure is a bug in decide, never bad input."""
    for key, amount in state.balances.items():
        if amount < 0:
            raise InvariantViolation(f"wallet {state.player_id} {key} is negative: {amount}")


# ---------------------------------------------------------------- reads

def wallet_view(state: WalletState, types: tuple[str, ...] | None = None) -> dict:
    wallets = []
    for wallet_type in PLAYER_WALLETS:
        if types and wallet_type not in types:
            continue
        key = f"{wallet_type}:{state.currency}"
        if key not in state.balances:
            continue
        wallets.append(
            {
                "type": wallet_type,
                "currency": state.currency,
                "available": state.balances[key],
                "held": 0,
                "version": state.version,
            }
        )
    return {"player_id": state.player_id, "wallets": wallets, "version": state.version}
