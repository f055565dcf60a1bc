"""Table-driven scenarios of the wallet core: every command and every rejection."""
from __future__ import annotations

import pytest

from app.domain.errors import InvariantViolation
from app.domain.ledger import Posting, account_deltas, check_deltas_balance
from app.domain.wallet.codec import decode_state, encode_state
from app.domain.wallet.core import (
    ApplyPspResult,
    Context,
    CreatePlayer,
    RequestDeposit,
    WalletResult,
    WalletState,
    check_wallet,
    decide,
    evolve,
    wallet_view,
)

HOUR_MS = 3_600_000
RETENTION_MS = 72 * HOUR_MS


def ctx(key: str, request_hash: str = "h", now_ms: int = 1_000) -> Context:
    return Context(tenant_id="dev", operation_key=key, request_hash=request_hash, now_ms=now_ms,
                   retention_ms=RETENTION_MS)


def apply(state: WalletState, command, key: str, request_hash: str = "h", now_ms: int = 1_000):
    decision = decide(state, command, ctx(key, request_hash, now_ms))
    return evolve(state, decision.events), decision


def registered(currency: str = "EUR") -> WalletState:
    state, _ = apply(WalletState.empty("dev", "p1"), CreatePlayer("p1", currency, "DE"), "player:p1")
    return state


def with_pending_deposit(amount: int = 10_000) -> WalletState:
    state, _ = apply(registered(), RequestDeposit("d1", "p1", amount, "EUR", "card"), "deposit:k1")
    return state


def psp(status: str = "SUCCEEDED", amount: int = 10_000, fee: int = 0, event: str = "e1", currency: str = "EUR",
        deposit: str = "d1") -> ApplyPspResult:
    return ApplyPspResult("sandbox", event, deposit, status, amount, currency, fee)


REJECTIONS = [
    ("deposit for unknown player", lambda: WalletState.empty("dev", "p1"),
     RequestDeposit("d1", "p1", 100, "EUR", "card"), WalletResult.PLAYER_NOT_FOUND),
    ("deposit in another currency", registered, RequestDeposit("d1", "p1", 100, "USD", "card"),
     WalletResult.CURRENCY_NOT_SUPPORTED),
    ("deposit id reused under a new key", with_pending_deposit, RequestDeposit("d1", "p1", 100, "EUR", "card"),
     WalletResult.DEPOSIT_EXISTS),
    ("webhook for unknown deposit", registered, psp(deposit="nope"), WalletResult.DEPOSIT_NOT_FOUND),
    ("webhook amount differs", with_pending_deposit, psp(amount=9_999), WalletResult.AMOUNT_MISMATCH),
    ("webhook currency differs", with_pending_deposit, psp(currency="USD"), WalletResult.AMOUNT_MISMATCH),
    ("fee above amount", with_pending_deposit, psp(fee=10_001), WalletResult.FEE_EXCEEDS_AMOUNT),
    ("player re-created with other currency", registered, CreatePlayer("p1", "USD", "DE"),
     WalletResult.PLAYER_EXISTS_WITH_DIFFERENT_DETAILS),
]


@pytest.mark.parametrize("name,make_state,command,code", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejections_change_nothing(name, make_state, command, code):
    state = make_state()
    decision = decide(state, command, ctx("new-key"))
    assert decision.outcome.code is code
    assert decision.outcome.body["error"]["code"] == str(code)
    assert (decision.events, decision.postings) == ((), ())
    assert evolve(state, decision.events) is state


def test_a_rejected_request_is_decided_again_on_retry():
    state = registered()
    command = RequestDeposit("d1", "p1", 100, "USD", "card")
    assert decide(state, command, ctx("k")).outcome.code is WalletResult.CURRENCY_NOT_SUPPORTED
    assert "k" not in state.operations


def test_create_player_opens_every_player_wallet_at_zero():
    state = registered()
    assert state.registered and state.currency == "EUR"
    assert state.balances == {f"{t}:EUR": 0 for t in ("CASH", "BONUS", "WAGER", "FREESPINS", "POINTS")}


def test_create_player_repeat_is_idempotent_even_under_a_new_key():
    state = registered()
    again, decision = apply(state, CreatePlayer("p1", "EUR", "DE"), "other-key")
    assert decision.outcome.code is WalletResult.CREATED
    assert again.balances == state.balances


def test_deposit_is_pending_until_the_psp_confirms():
    state = with_pending_deposit()
    assert state.deposits["d1"].state == "PENDING"
    assert state.balance("CASH", "EUR") == 0


def test_succeeded_deposit_credits_cash_and_books_the_fee():
    state, decision = apply(with_pending_deposit(10_000), psp(fee=250), "psp:sandbox:e1")
    assert decision.outcome.code is WalletResult.OK
    assert decision.outcome.body == {"deposit_id": "d1", "state": "SUCCEEDED", "credited": 9_750}
    assert state.balance("CASH", "EUR") == 9_750
    assert state.deposits["d1"].state == "SUCCEEDED"
    legs = [(p.leg, p.debit_account, p.credit_account, p.amount_minor, p.category) for p in decision.postings]
    assert legs == [
        (0, "system:PSP_SETTLEMENT:sandbox:EUR", "player:p1:CASH:EUR", 10_000, "deposit"),
        (1, "player:p1:CASH:EUR", "system:PSP_FEES:sandbox:EUR", 250, "deposit_fee"),
    ]
    deltas = account_deltas(decision.postings)
    check_deltas_balance(deltas)
    assert deltas["player:p1:CASH:EUR"] == state.balance("CASH", "EUR")


def test_failed_deposit_moves_nothing():
    state, decision = apply(with_pending_deposit(), psp(status="FAILED"), "psp:sandbox:e1")
    assert decision.outcome.body["state"] == "FAILED"
    assert decision.postings == ()
    assert state.balance("CASH", "EUR") == 0


def test_second_verdict_on_a_final_deposit_is_refused():
    state, _ = apply(with_pending_deposit(), psp(), "psp:sandbox:e1")
    after, decision = apply(state, psp(status="FAILED", event="e2"), "psp:sandbox:e2")
    assert decision.outcome.code is WalletResult.DEPOSIT_ALREADY_FINAL
    assert after.balance("CASH", "EUR") == 10_000


def test_replay_returns_the_first_result_and_re_emits_the_first_postings():
    state, first = apply(with_pending_deposit(), psp(fee=10), "psp:sandbox:e1")
    again, replay = apply(state, psp(fee=10), "psp:sandbox:e1")
    assert replay.replayed
    assert replay.outcome == first.outcome
    assert replay.postings == first.postings
    assert replay.events == ()
    assert again is state  # nothing changed, not even the version


def test_same_key_with_a_different_request_is_a_conflict():
    state, _ = apply(with_pending_deposit(), psp(), "psp:sandbox:e1", request_hash="h1")
    _, decision = apply(state, psp(), "psp:sandbox:e1", request_hash="h2")
    assert decision.outcome.code is WalletResult.IDEMPOTENCY_CONFLICT
    assert decision.postings == ()


def test_operation_ids_are_kept_for_the_retention_period_then_pruned():
    state = registered()
    state, _ = apply(state, RequestDeposit("d1", "p1", 100, "EUR", "card"), "deposit:old", now_ms=0)
    state, _ = apply(state, RequestDeposit("d2", "p1", 100, "EUR", "card"), "deposit:new", now_ms=RETENTION_MS)
    assert "deposit:old" in state.operations  # exactly 72 h old: still kept
    state, _ = apply(state, RequestDeposit("d3", "p1", 100, "EUR", "card"), "deposit:x", now_ms=RETENTION_MS + 1)
    assert "deposit:old" not in state.operations and "deposit:new" in state.operations


def test_version_counts_state_changes():
    state = with_pending_deposit()
    assert state.version == 2
    assert wallet_view(state)["wallets"][0] == {
        "type": "CASH", "currency": "EUR", "available": 0, "held": 0, "version": 2,
    }


def test_wallet_view_filters_types():
    view = wallet_view(registered(), ("CASH", "BONUS"))
    assert [w["type"] for w in view["wallets"]] == ["CASH", "BONUS"]


def test_negative_balance_is_an_invariant_violation():
    bad = WalletState(tenant_id="dev", player_id="p1", registered=True, currency="EUR", balances={"CASH:EUR": -1})
    with pytest.raises(InvariantViolation):
        check_wallet(bad)


def test_codec_round_trips_the_whole_record():
    state, _ = apply(with_pending_deposit(), psp(fee=5), "psp:sandbox:e1")
    assert decode_state(encode_state(state)) == state


def test_unknown_command_is_a_bug():
    with pytest.raises(InvariantViolation):
        decide(registered(), object(), ctx("k"))  # type: ignore[arg-type]


def test_postings_carry_the_operation_and_reason():
    _, decision = apply(with_pending_deposit(), psp(), "psp:sandbox:e1", now_ms=42)
    p: Posting = decision.postings[0]
    assert (p.tenant_id, p.operation_id, p.created_at_ms, p.player_id) == ("dev", "deposit:d1", 42, "p1")
    assert p.reason == "psp sandbox event e1"
