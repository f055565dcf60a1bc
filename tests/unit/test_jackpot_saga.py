"""The payout saga: trigger -> jp.payout.requested -> credited or failed -> retries.
Every message duplicated, delayed and reordered; zero missed and zero doubled payouts."""
from __future__ import annotations

import itertools

import pytest

from app.domain.jackpot.core import (
    JackpotResult, PayoutCredited, PayoutFailed, RetryPayout, Tick, Trigger, WinUpdated, decide, evolve,
    next_timer_ms,
)
from app.domain.jackpot.state import CREDITED, FAILED, PAYOUT_REQUESTED
from tests.unit.test_jackpot_scenarios import HOUR_MS, RULES, World, world

R = JackpotResult


def won(amount_seed: int = 1_000) -> World:
    w = world(seed_minor=amount_seed)
    d = w.do(Trigger("t1", "p1", "r1", "b1", "MT"))
    assert d.outcome.body["state"] == PAYOUT_REQUESTED
    return w


def win(w: World):
    return w.state.wins["t1"]


def test_credit_closes_the_win_and_a_duplicate_credit_changes_nothing():
    w = won()
    d = w.do(PayoutCredited("t1", 1_000))
    assert d.outcome.code is R.OK and d.outcome.body["changed"] is True
    assert win(w).state == CREDITED and win(w).closed_at_ms == w.now
    state = w.state
    d = w.do(PayoutCredited("t1", 1_000))
    assert d.outcome.code is R.OK and d.outcome.body["changed"] is False
    assert d.events == () and w.state is state


def test_retryable_failure_is_retried_after_the_backoff_under_the_same_key():
    w = won()
    w.do(PayoutFailed("t1", 1, "loss_limit", retryable=True))
    assert (win(w).state, win(w).fail_reason) == (FAILED, "loss_limit")
    assert next_timer_ms(w.state, RULES) == w.now + RULES.payout_retry_ms
    assert w.do(Tick(), advance_ms=RULES.payout_retry_ms - 1).payouts == ()
    d = w.do(Tick(), advance_ms=1)
    (request,) = d.payouts
    assert (request.attempt, request.payout_key) == (2, "jp_p_pool1_t1")
    assert d.outcome.body["retried"] == ["t1"] and win(w).state == PAYOUT_REQUESTED
    # The first attempt's failure, delivered again late, is stale.
    assert w.code(PayoutFailed("t1", 1, "loss_limit")) is R.STALE_PAYOUT_MESSAGE
    assert w.code(PayoutCredited("t1", 1_000)) is R.OK
    assert win(w).state == CREDITED


def test_non_retryable_failure_waits_for_an_operator():
    w = won()
    w.do(PayoutFailed("t1", 1, "aml_hold", retryable=False))
    assert next_timer_ms(w.state, RULES) is None
    assert w.do(Tick(), advance_ms=HOUR_MS).payouts == ()
    d = w.do(RetryPayout("t1"))
    assert d.outcome.code is R.OK and d.payouts[0].attempt == 2
    assert w.kinds("payout_retry")[-1].payload == {
        "pool_id": "pool1", "at_ms": w.now, "trigger_id": "t1", "attempt": 2, "after_failure": "aml_hold"}


def test_automatic_retries_stop_at_the_attempt_limit():
    w = won()
    for attempt in range(1, RULES.max_payout_attempts + 1):
        assert w.code(PayoutFailed("t1", attempt, "limits")) is R.OK
        w.do(Tick(), advance_ms=RULES.payout_retry_ms)
    assert win(w).state == FAILED and win(w).attempt == RULES.max_payout_attempts
    assert next_timer_ms(w.state, RULES) is None


def test_an_unanswered_request_is_sent_again_under_the_same_attempt():
    w = won()
    first = w.requests[-1]
    assert next_timer_ms(w.state, RULES) == w.now + RULES.payout_resend_ms
    d = w.do(Tick("resend-1"), advance_ms=RULES.payout_resend_ms)
    (again,) = d.payouts
    assert (again.payout_key, again.attempt, again.amount_minor) == (first.payout_key, 1, first.amount_minor)
    assert d.outcome.body["resent"] == ["t1"]
    # A redelivered tick replays: it re-emits the request, it does not send a third one.
    replay = decide(w.state, Tick("resend-1"), w.ctx())
    assert replay.replayed and replay.payouts == d.payouts


def test_credited_wins_are_pruned_after_retention_but_open_ones_stay():
    w = won()
    w.do(Trigger("t2", "p2", "r2", "b1", "MT"))
    w.do(PayoutCredited("t1", 1_000))
    w.contribute(advance_ms=73 * HOUR_MS)
    assert "t1" not in w.state.wins and w.state.wins["t2"].state == PAYOUT_REQUESTED
    # A very late duplicate of the credit now finds nothing, and still changes nothing.
    assert w.code(PayoutCredited("t1", 1_000)) is R.PAYOUT_NOT_FOUND


def wallet_replies(amount: int) -> list:
    return [PayoutFailed("t1", 1, "aml_hold"), PayoutCredited("t1", amount), PayoutCredited("t1", amount),
            PayoutFailed("t1", 1, "aml_hold")]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_every_order_of_duplicated_replies_ends_credited_once(order):
    """The wallet answered attempt 1 twice with a failure (an AML hold, then lifted) and
    twice with the credit; the broker delivers all four in any order."""
    w = won()
    replies = wallet_replies(1_000)
    credited_events = 0
    for i in order:
        d = w.do(replies[i])
        credited_events += sum(1 for e in d.events if isinstance(e, WinUpdated) and e.win.state == CREDITED)
        assert d.postings == () and d.payouts == ()
    assert credited_events == 1
    assert win(w).state == CREDITED
    # Nothing left to send: no timer, no further request.
    assert next_timer_ms(w.state, RULES) is None
    assert w.do(Tick(), advance_ms=HOUR_MS).payouts == ()


def test_duplicated_trigger_message_pays_once():
    w = won()
    again = w.do(Trigger("t1", "p1", "r1", "b1", "MT"))
    assert again.replayed and again.payouts == (w.requests[0],)
    assert len(w.state.wins) == 1 and w.state.totals.payouts_minor == 1_000


def test_a_lost_request_is_recovered_by_the_timer():
    """The agent stored the record (and the ledger got the postings) but crashed before
    the request left: the win is PAYOUT_REQUESTED in the record, so the next due tick
    asks the wallet again, under the same key."""
    w = world()
    d = decide(w.state, Trigger("t1", "p1", "r1", "b1", "MT"), w.ctx())
    w.state = evolve(w.state, d.events)
    w.ledger.update({(p.operation_id, p.leg): p for p in d.postings})
    w.chain.extend(d.chain)
    w.now = next_timer_ms(w.state, RULES) - 1
    (request,) = w.do(Tick(), advance_ms=1).payouts
    (lost,) = d.payouts
    assert (request.payout_key, request.attempt, request.amount_minor) == (lost.payout_key, 1, lost.amount_minor)
