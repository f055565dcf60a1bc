"""Table-driven scenarios of the wallet core: every command and every rejection."""
from __future__ import annotations

import pytest

from app.domain.errors import InvariantViolation
from app.domain.ledger import Posting, account_deltas, check_deltas_balance
from app.domain.wallet.core import (
    ApplyPspResult,
    Context,
    CreatePlayer,
    RequestDeposit,
    Rules,
    WalletResult,
    WalletState,
    check_wallet,
    decide,
    evolve,
    wallet_view,
)
from tables.wallets import decode_state, encode_state

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


def test_replay_returns_the_first_result_and_emits_no_postings_again():
    # A record is stored only with the postings of the decision that made it, so a
    # replay's postings are durable already.
    state, first = apply(with_pending_deposit(), psp(fee=10), "psp:sandbox:e1")
    again, replay = apply(state, psp(fee=10), "psp:sandbox:e1")
    assert first.postings
    assert replay.replayed
    assert replay.outcome == first.outcome
    assert replay.postings == ()
    assert replay.events == ()
    assert again is state  # nothing changed, not even the version


def test_same_key_with_a_different_request_is_a_conflict():
    state, _ = apply(with_pending_deposit(), psp(), "psp:sandbox:e1", request_hash="h1")
    _, decision = apply(state, psp(), "psp:sandbox:e1", request_hash="h2")
    assert decision.outcome.code is WalletResult.IDEMPOTENCY_CONFLICT
    assert decision.postings == ()


def test_the_operations_window_is_bounded_in_time_and_count():
    rules = Rules(operation_window_ms=60_000, operation_window_count=3)

    def at(state, n, now_ms):
        decision = decide(state, RequestDeposit(f"d{n}", "p1", 100, "EUR", "card"),
                          Context("dev", f"deposit:k{n}", "h", now_ms, RETENTION_MS, rules))
        return evolve(state, decision.events)

    state = at(registered(), 1, now_ms=1_000)  # the player was created at 1_000 too
    state = at(state, 2, now_ms=61_000)
    assert set(state.operations) == {"player:p1", "deposit:k1", "deposit:k2"}  # exactly the window's age
    state = at(state, 3, now_ms=61_001)
    assert set(state.operations) == {"deposit:k2", "deposit:k3"}
    for n in range(4, 9):
        state = at(state, n, now_ms=61_001 + n)
    assert set(state.operations) == {"deposit:k6", "deposit:k7", "deposit:k8"}


def test_closed_items_are_kept_for_the_retention_at_most_the_newest_few():
    rules = Rules(closed_kept_per_kind=2)
    state = registered()
    for n in range(5):
        command = RequestDeposit(f"d{n}", "p1", 100, "EUR", "card")
        state = evolve(state, decide(state, command, Context("dev", f"deposit:k{n}", "h", 10 + n, RETENTION_MS,
                                                             rules)).events)
        verdict = ApplyPspResult("sandbox", f"e{n}", f"d{n}", "FAILED", 100, "EUR", 0)
        state = evolve(state, decide(state, verdict, Context("dev", f"psp:e{n}", "h", 10 + n, RETENTION_MS,
                                                             rules)).events)
    assert set(state.deposits) == {"d3", "d4"}
    # A closed deposit no longer in the record is still known by its claim.
    late = ApplyPspResult("sandbox", "e9", "d0", "SUCCEEDED", 100, "EUR", 0)
    decision = decide(state, late, Context("dev", "psp:e9", "h", 9, RETENTION_MS, rules,
                                           claimed=frozenset({"deposit:d0"})))
    assert decision.outcome.code is WalletResult.DEPOSIT_ALREADY_FINAL
    again = decide(state, RequestDeposit("d0", "p1", 100, "EUR", "card"),
                   Context("dev", "deposit:other", "h", 9, RETENTION_MS, rules, claimed=frozenset({"deposit:d0"})))
    assert again.outcome.code is WalletResult.DEPOSIT_EXISTS and again.events == ()


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
