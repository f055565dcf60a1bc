"""Scenarios for bets and holds, spend policies, withdrawals, bonuses, FX, adjustments,
responsible gaming and anti-fraud: every operation and every rejection."""
from __future__ import annotations

from decimal import Decimal

import pytest

from app.domain.ledger import account_deltas, check_deltas_balance
from app.domain.wallet.calendar import DAY_MS, MINUTE_MS, period_key
from app.domain.wallet.core import (
    Adjust, ApplyPspResult, ApplyWithdrawalResult, CancelBet, CaptureHold, Context, ConvertFx, CreatePlayer,
    GrantBonus, PlaceBet, PlayRound, ReleaseHold, RequestDeposit, RequestWithdrawal, Rules, SetLimits,
    SetPlayerStatus, SettleBet, Tick, WalletResult, WalletState, decide, evolve, fx_convert_amount, wallet_view,
)
from tables.wallets import decode_state, encode_state

R = WalletResult
T0 = 1_763_000_000_000  # a Thursday in November 2025, 02:13 UTC
RULES = Rules(bet_hold_ttl_ms=60_000, withdrawal_hold_ttl_ms=3_600_000, limit_increase_delay_ms=DAY_MS,
              max_deposits_per_hour=3, max_withdrawals_per_hour=2, blocked_destinations=frozenset({"IBAN-BAD"}))


class World:
    """One player's record plus every posting ever emitted, as the ledger would hold them."""

    def __init__(self) -> None:
        self.state = WalletState.empty("dev", "p1")
        self.now = T0
        self.ledger: dict = {}
        self.audit: list = []
        self.n = 0

    def do(self, command, key: str | None = None, request_hash: str = "h", advance_ms: int = 1_000):
        self.now += advance_ms
        self.n += 1
        ctx = Context("dev", key if key is not None else f"op{self.n}", request_hash, self.now, 72 * 3_600_000, RULES)
        decision = decide(self.state, command, ctx)
        self.state = evolve(self.state, decision.events)
        for p in decision.postings:
            self.ledger.setdefault((p.operation_id, p.leg), p)
        self.audit.extend(decision.audit)
        assert decode_state(encode_state(self.state)) == self.state
        return decision

    def code(self, command, **kw) -> R:
        return self.do(command, **kw).outcome.code

    def bal(self, wallet: str, currency: str = "EUR") -> int:
        return self.state.balance(wallet, currency)

    def ledger_balance(self, wallet: str, currency: str = "EUR") -> int:
        return account_deltas(self.ledger.values()).get(f"player:p1:{wallet}:{currency}", 0)


def funded(cash: int = 10_000, bonus: int = 0, verified: bool = True) -> World:
    w = World()
    w.do(CreatePlayer("p1", "EUR", "DE"))
    if cash:
        w.do(RequestDeposit("d-fund", "p1", cash, "EUR", "card"))
        w.do(ApplyPspResult("sandbox", "e-fund", "d-fund", "SUCCEEDED", cash, "EUR", 0))
    if bonus:
        w.do(GrantBonus("b1", bonus, "EUR", 3 * bonus, T0 + 7 * DAY_MS))
    if verified:
        w.do(SetPlayerStatus("VERIFIED", False))
    return w


def assert_books(w: World) -> None:
    deltas = account_deltas(w.ledger.values())
    check_deltas_balance(deltas)
    for key, amount in w.state.balances.items():
        assert deltas.get(f"player:p1:{key}", 0) == amount, key


# ---------------------------------------------------------------- bets and holds

def test_casino_policy_spends_wager_then_bonus_then_cash():
    w = funded(cash=1_000, bonus=300)
    d = w.do(PlaceBet("b1", 500, "EUR", "casino"))
    assert d.outcome.code is R.CREATED
    assert d.outcome.body["sources"] == [["BONUS", 300], ["CASH", 200]]
    assert d.outcome.body["expires_in"] == 60
    assert (w.bal("BONUS"), w.bal("CASH"), w.bal("HOLD")) == (0, 800, 500)
    assert d.postings[0].reason == "policy casino: BONUS=300, CASH=200"
    view = {x["type"]: x for x in wallet_view(w.state)["wallets"]}
    assert (view["CASH"]["held"], view["BONUS"]["held"]) == (200, 300)
    assert_books(w)


def test_sports_policy_spends_cash_first_then_moves_bonus_through_wager():
    w = funded(cash=100, bonus=300)
    d = w.do(PlaceBet("b1", 250, "EUR", "sports"))
    legs = [(p.debit_account.split(":")[2], p.credit_account.split(":")[2], p.amount_minor, p.category)
            for p in d.postings]
    assert legs == [("CASH", "HOLD", 100, "hold"), ("BONUS", "WAGER", 150, "policy_move"),
                    ("WAGER", "HOLD", 150, "hold")]
    assert (w.bal("CASH"), w.bal("BONUS"), w.bal("WAGER"), w.bal("HOLD")) == (0, 150, 0, 250)
    assert_books(w)


def test_win_settles_the_hold_to_the_provider_and_pays_cash():
    w = funded(cash=1_000)
    w.do(PlaceBet("b1", 400, "EUR", "casino", provider="acme"))
    d = w.do(SettleBet("b1", "WIN", 1_000))
    assert d.outcome.body == {"status": "SETTLED", "bet_id": "b1", "result": "WIN", "payout": 1_000,
                              "cash_delta": 1_000}
    assert [(p.debit_account, p.credit_account, p.amount_minor) for p in d.postings] == [
        ("player:p1:HOLD:EUR", "system:PROVIDER_SETTLEMENT:acme:EUR", 400),
        ("system:PROVIDER_SETTLEMENT:acme:EUR", "player:p1:CASH:EUR", 1_000)]
    assert (w.bal("CASH"), w.bal("HOLD")) == (1_600, 0)
    assert_books(w)


def test_loss_keeps_the_stake_and_a_cancel_returns_it_to_its_sources():
    w = funded(cash=1_000, bonus=200)
    w.do(PlaceBet("lost", 100, "EUR", "casino"))
    assert w.do(SettleBet("lost", "LOSS", 0)).outcome.body["cash_delta"] == 0
    w.do(PlaceBet("void", 300, "EUR", "casino"))  # 100 BONUS left, then 200 CASH
    d = w.do(CancelBet("void"))
    assert d.outcome.body == {"status": "CANCELLED", "bet_id": "void", "released": 300}
    assert (w.bal("BONUS"), w.bal("CASH"), w.bal("HOLD")) == (100, 1_000, 0)
    assert_books(w)


@pytest.mark.parametrize("setup,command,code", [
    ("none", PlaceBet("b1", 100, "EUR", "poker"), R.POLICY_NOT_FOUND),
    ("none", PlaceBet("b1", 100, "USD", "casino"), R.CURRENCY_NOT_SUPPORTED),
    ("none", PlaceBet("b1", 10_001, "EUR", "casino"), R.INSUFFICIENT_FUNDS),
    ("placed", PlaceBet("b1", 100, "EUR", "casino"), R.BET_EXISTS),
    ("none", SettleBet("nope", "WIN", 5), R.BET_NOT_FOUND),
    ("placed", SettleBet("b1", "WIN", 0), R.INVALID_PAYOUT),
    ("placed", SettleBet("b1", "LOSS", 5), R.INVALID_PAYOUT),
    ("settled", SettleBet("b1", "WIN", 5), R.BET_ALREADY_SETTLED),
    ("settled", CancelBet("b1"), R.BET_ALREADY_SETTLED),
    ("cancelled", SettleBet("b1", "WIN", 5), R.HOLD_NOT_OPEN),
    ("none", CaptureHold("bet:nope", 1), R.HOLD_NOT_FOUND),
    ("placed", CaptureHold("bet:b1", 101), R.CAPTURE_EXCEEDS_HOLD),
    ("cancelled", ReleaseHold("bet:b1"), R.HOLD_NOT_OPEN),
])
def test_bet_and_hold_rejections_change_nothing(setup, command, code):
    w = funded()
    if setup != "none":
        w.do(PlaceBet("b1", 100, "EUR", "casino"))
    if setup == "settled":
        w.do(SettleBet("b1", "LOSS", 0))
    if setup == "cancelled":
        w.do(CancelBet("b1"))
    before = w.state
    d = w.do(command)
    assert d.outcome.code is code
    assert (d.events, d.postings) == ((), ())
    assert w.state is before


def test_partial_and_multiple_captures_then_release_of_the_rest():
    w = funded(cash=1_000, bonus=100)
    w.do(PlaceBet("b1", 600, "EUR", "casino"))  # BONUS 100, CASH 500
    first = w.do(CaptureHold("bet:b1", 150))
    assert first.outcome.body == {"hold_id": "bet:b1", "captured": 150, "remaining": 450, "state": "HELD"}
    assert w.do(CaptureHold("bet:b1", 50)).outcome.body["remaining"] == 400
    released = w.do(ReleaseHold("bet:b1"))
    assert released.outcome.body["released"] == 400
    # Captures consumed BONUS first, so the release returns only cash.
    assert (w.bal("BONUS"), w.bal("CASH"), w.bal("HOLD")) == (0, 900, 0)
    assert_books(w)


def test_captures_can_close_a_hold_exactly():
    w = funded()
    w.do(PlaceBet("b1", 100, "EUR", "casino"))
    w.do(CaptureHold("bet:b1", 60))
    assert w.do(CaptureHold("bet:b1", 40)).outcome.body["state"] == "CAPTURED"
    assert w.code(ReleaseHold("bet:b1")) is R.HOLD_NOT_OPEN


def test_an_unsettled_bet_expires_and_its_stake_returns():
    w = funded(cash=1_000)
    w.do(PlaceBet("b1", 300, "EUR", "casino"))
    assert w.state.next_deadline_ms() == w.now + 60_000
    assert w.do(Tick(), key="", advance_ms=59_000).outcome.body == {"expired_holds": [], "forfeited_bonuses": []}
    d = w.do(Tick(), key="", advance_ms=1_000)
    assert d.outcome.body["expired_holds"] == ["bet:b1"]
    assert d.postings[0].category == "hold_expired"
    assert (w.bal("CASH"), w.bal("HOLD"), w.state.holds["bet:b1"].state) == (1_000, 0, "EXPIRED")
    assert w.code(SettleBet("b1", "WIN", 10)) is R.HOLD_NOT_OPEN
    assert w.state.next_deadline_ms() is None
    assert_books(w)


# ---------------------------------------------------------------- withdrawals

def test_withdrawal_holds_cash_then_the_psp_pays_it_out():
    w = funded(cash=1_000)
    d = w.do(RequestWithdrawal("w1", 700, "EUR", "bank", "IBAN-OK"))
    assert (d.outcome.code, d.outcome.body) == (R.ACCEPTED, {"withdrawal_id": "w1", "state": "PENDING",
                                                             "status_url": "/v1/withdrawals/w1"})
    assert (w.bal("CASH"), w.bal("HOLD")) == (300, 700)
    paid = w.do(ApplyWithdrawalResult("sandbox", "ew1", "w1", "SUCCEEDED", 700, "EUR", 20))
    assert [(p.credit_account, p.amount_minor) for p in paid.postings] == [
        ("system:PAYOUTS:sandbox:EUR", 680), ("system:PSP_FEES:sandbox:EUR", 20)]
    assert (w.bal("CASH"), w.bal("HOLD"), w.state.withdrawals["w1"].state) == (300, 0, "SUCCEEDED")
    assert w.code(ApplyWithdrawalResult("sandbox", "ew2", "w1", "FAILED", 700, "EUR", 0)) is R.WITHDRAWAL_ALREADY_FINAL
    assert_books(w)


def test_failed_or_expired_withdrawal_returns_the_cash():
    w = funded(cash=1_000)
    w.do(RequestWithdrawal("w1", 400, "EUR", "bank"))
    w.do(ApplyWithdrawalResult("sandbox", "e1", "w1", "FAILED", 400, "EUR", 0))
    assert (w.bal("CASH"), w.state.withdrawals["w1"].state) == (1_000, "FAILED")
    w.do(RequestWithdrawal("w2", 400, "EUR", "bank"))
    w.do(Tick(), key="", advance_ms=3_600_000)
    assert (w.bal("CASH"), w.state.withdrawals["w2"].state) == (1_000, "EXPIRED")
    assert_books(w)


@pytest.mark.parametrize("prepare,command,code", [
    ("unverified", RequestWithdrawal("w1", 100, "EUR", "bank"), R.KYC_REQUIRED),
    ("aml", RequestWithdrawal("w1", 100, "EUR", "bank"), R.AML_HOLD),
    ("none", RequestWithdrawal("w1", 100, "EUR", "bank", "IBAN-BAD"), R.DESTINATION_BLOCKED),
    ("two", RequestWithdrawal("w3", 100, "EUR", "bank"), R.VELOCITY_LIMIT_EXCEEDED),
    ("none", RequestWithdrawal("w1", 10_001, "EUR", "bank"), R.INSUFFICIENT_FUNDS),
    ("one", RequestWithdrawal("w1", 100, "EUR", "bank"), R.WITHDRAWAL_EXISTS),
    ("none", ApplyWithdrawalResult("sandbox", "e", "nope", "FAILED", 1, "EUR", 0), R.WITHDRAWAL_NOT_FOUND),
    ("one", ApplyWithdrawalResult("sandbox", "e", "w1", "SUCCEEDED", 99, "EUR", 0), R.AMOUNT_MISMATCH),
    ("one", ApplyWithdrawalResult("sandbox", "e", "w1", "SUCCEEDED", 100, "EUR", 101), R.FEE_EXCEEDS_AMOUNT),
])
def test_withdrawal_rejections(prepare, command, code):
    w = funded(verified=prepare != "unverified")
    if prepare == "aml":
        w.do(SetPlayerStatus("VERIFIED", True))
    if prepare in ("one", "two"):
        w.do(RequestWithdrawal("w1", 100, "EUR", "bank"))
    if prepare == "two":
        w.do(RequestWithdrawal("w2", 100, "EUR", "bank"))
    before, audits = w.state, len(w.audit)
    d = w.do(command)
    assert d.outcome.code is code and w.state is before and d.postings == ()
    compliance = code in (R.KYC_REQUIRED, R.AML_HOLD, R.DESTINATION_BLOCKED, R.VELOCITY_LIMIT_EXCEEDED)
    assert len(w.audit) == audits + (1 if compliance else 0)
    if compliance:
        assert (w.audit[-1].kind, w.audit[-1].code) == ("refusal", str(code))


# ---------------------------------------------------------------- bonuses

def test_turnover_counts_down_and_converts_the_bonus_to_cash():
    w = funded(cash=0, bonus=100)  # wager requirement 300
    w.do(Adjust("a1", "CASH", "EUR", 1_000, "goodwill"))
    assert wallet_view(w.state, ("BONUS",))["wallets"][0]["wager_required"] == 300
    w.do(PlaceBet("b1", 200, "EUR", "sports"))  # all from CASH
    w.do(SettleBet("b1", "LOSS", 0))
    assert w.state.bonuses["b1"].wager_required_minor == 100
    w.do(PlaceBet("b2", 100, "EUR", "sports"))
    d = w.do(SettleBet("b2", "WIN", 150))
    assert d.postings[-1].category == "bonus_conversion" and d.postings[-1].amount_minor == 100
    assert d.outcome.body["cash_delta"] == 250
    assert (w.bal("BONUS"), w.bal("CASH"), w.state.bonuses["b1"].state) == (0, 950, "CONVERTED")
    assert_books(w)


def test_an_expired_bonus_is_forfeited():
    w = funded(cash=0, bonus=100)
    d = w.do(Tick(), key="", advance_ms=7 * DAY_MS)
    assert d.outcome.body["forfeited_bonuses"] == ["b1"]
    assert d.postings[0].credit_account == "system:ADJUSTMENTS:bonus:EUR"
    assert (w.bal("BONUS"), w.state.bonuses["b1"].state) == (0, "FORFEITED")
    assert w.code(GrantBonus("b1", 5, "EUR", 5, T0 + 9 * DAY_MS)) is R.BONUS_EXISTS
    assert_books(w)


# ---------------------------------------------------------------- FX and adjustments

@pytest.mark.parametrize("amount,rate,src,dst,expected,residue", [
    (10_000, "1.0873", "EUR", "USD", 10_873, "0"),
    (1, "1.5", "EUR", "USD", 2, "-0.5"),        # 1.5 rounds half to even: 2
    (5, "0.5", "EUR", "USD", 2, "0.5"),         # 2.5 rounds half to even: 2
    (7, "0.5", "EUR", "USD", 4, "-0.5"),        # 3.5 rounds half to even: 4
    (10_000, "161.37", "EUR", "JPY", 16_137, "0"),  # JPY has no minor unit
    (1_000, "0.00620", "JPY", "EUR", 620, "0"),
    (333, "1.33333", "EUR", "USD", 444, "-0.00111"),
])
def test_fx_uses_bankers_rounding_in_minor_units(amount, rate, src, dst, expected, residue):
    converted, rest = fx_convert_amount(amount, Decimal(rate), src, dst)
    assert (converted, rest) == (expected, Decimal(residue))


def test_fx_conversion_posts_through_fx_accounts_and_books_the_residue():
    w = funded(cash=1_000)
    # A rate read back from numeric(24,12) carries trailing zeros; reports do not.
    d = w.do(ConvertFx("fx1", "CASH", "EUR", "USD", 333, "1.333330000000", T0))
    assert d.outcome.body["rate"] == "1.33333"
    assert d.outcome.body["credited"] == 444 and d.outcome.body["residue_minor"] == "-0.00111"
    assert [(p.debit_account, p.credit_account, p.amount_minor) for p in d.postings] == [
        ("player:p1:CASH:EUR", "system:FX_EURUSD:EUR", 333), ("system:FX_EURUSD:USD", "player:p1:CASH:USD", 444)]
    assert "residue -0.00111 USD minor" in d.postings[0].reason
    assert (w.bal("CASH"), w.bal("CASH", "USD")) == (667, 444)
    assert {(x["type"], x["currency"]) for x in wallet_view(w.state)["wallets"]} >= {("CASH", "USD")}
    assert_books(w)


@pytest.mark.parametrize("command,code", [
    (ConvertFx("fx", "CASH", "EUR", "EUR", 1, "1", T0), R.SAME_CURRENCY),
    (ConvertFx("fx", "CASH", "EUR", "USD", 1, "abc", T0), R.INVALID_RATE),
    (ConvertFx("fx", "CASH", "EUR", "USD", 1, "-1", T0), R.INVALID_RATE),
    (ConvertFx("fx", "CASH", "EUR", "USD", 1, "NaN", T0), R.INVALID_RATE),
    (ConvertFx("fx", "CASH", "EUR", "USD", 1, "0.1", T0), R.AMOUNT_TOO_SMALL),
    (ConvertFx("fx", "CASH", "EUR", "USD", 10_001, "1.1", T0), R.INSUFFICIENT_FUNDS),
    (Adjust("a", "CASH", "EUR", -10_001, "oops"), R.INSUFFICIENT_FUNDS),
])
def test_fx_and_adjustment_rejections(command, code):
    w = funded()
    before = w.state
    assert w.code(command) is code and w.state is before


def test_adjustments_are_reasoned_postings_and_audited():
    w = funded(cash=1_000)
    d = w.do(Adjust("a1", "CASH", "EUR", -250, "duplicate credit reversed, ticket 42"))
    assert (d.postings[0].debit_account, d.postings[0].credit_account) == ("player:p1:CASH:EUR",
                                                                          "system:ADJUSTMENTS:EUR")
    assert d.postings[0].reason == "duplicate credit reversed, ticket 42"
    assert (w.audit[-1].kind, w.audit[-1].detail["amount_minor"]) == ("adjustment", -250)
    assert w.bal("CASH") == 750
    assert_books(w)


# ---------------------------------------------------------------- responsible gaming

def test_deposit_limit_per_day_counts_pending_deposits_and_frees_failed_ones():
    w = funded(cash=0)
    w.do(SetLimits(amounts=(("deposit", "day", 1_000),)))
    assert w.code(RequestDeposit("d1", "p1", 700, "EUR", "card")) is R.ACCEPTED
    refused = w.do(RequestDeposit("d2", "p1", 400, "EUR", "card"))
    assert refused.outcome.code is R.DEPOSIT_LIMIT_EXCEEDED
    assert refused.audit[0].detail["limit_minor"] == 1_000 and refused.audit[0].detail["used_minor"] == 700
    w.do(ApplyPspResult("sandbox", "e1", "d1", "FAILED", 700, "EUR", 0))
    assert w.code(RequestDeposit("d3", "p1", 400, "EUR", "card")) is R.ACCEPTED


def test_limits_reset_with_the_period():
    w = funded(cash=5_000)
    w.do(SetLimits(amounts=(("bet", "day", 500),)))
    w.do(PlaceBet("b1", 500, "EUR", "casino"))
    assert w.code(PlaceBet("b2", 1, "EUR", "casino")) is R.BET_LIMIT_EXCEEDED
    assert w.code(PlaceBet("b2", 1, "EUR", "casino"), advance_ms=DAY_MS) is R.CREATED


def test_loss_limit_counts_stakes_less_winnings():
    w = funded(cash=5_000)
    w.do(SetLimits(amounts=(("loss", "week", 1_000),)))
    w.do(PlaceBet("b1", 800, "EUR", "casino"))
    w.do(SettleBet("b1", "WIN", 500))  # net loss 300
    assert w.code(PlaceBet("b2", 700, "EUR", "casino")) is R.CREATED
    assert w.code(PlaceBet("b3", 1, "EUR", "casino")) is R.LOSS_LIMIT_EXCEEDED


def test_a_lower_limit_applies_at_once_a_higher_one_after_the_cooling_period():
    w = funded(cash=5_000)
    w.do(SetLimits(amounts=(("bet", "day", 1_000),)))
    d = w.do(SetLimits(amounts=(("bet", "day", 3_000),)))
    assert d.outcome.body["limits"]["bet:day"] == 1_000
    assert d.outcome.body["pending"]["bet:day"]["value"] == 3_000
    assert w.code(PlaceBet("b1", 1_500, "EUR", "casino")) is R.BET_LIMIT_EXCEEDED
    assert w.code(PlaceBet("b1", 1_500, "EUR", "casino"), advance_ms=DAY_MS) is R.CREATED
    w.do(SetLimits(amounts=(("bet", "day", None),)))  # removal also waits
    assert w.code(PlaceBet("b2", 1_501, "EUR", "casino")) is R.BET_LIMIT_EXCEEDED


def test_repeating_a_raise_keeps_its_cooling_period_and_the_current_value_cancels_it():
    w = funded(cash=5_000)
    w.do(SetLimits(amounts=(("deposit", "week", 1_000),)))
    first = w.do(SetLimits(amounts=(("deposit", "week", 2_000),)))
    again = w.do(SetLimits(amounts=(("deposit", "week", 2_000),)), advance_ms=DAY_MS // 2)
    assert again.outcome.body["pending"] == first.outcome.body["pending"]
    cancelled = w.do(SetLimits(amounts=(("deposit", "week", 1_000),)))
    assert cancelled.outcome.body["pending"] == {} and cancelled.outcome.body["limits"]["deposit:week"] == 1_000


def test_session_limit_counts_continuous_play():
    w = funded(cash=5_000)
    w.do(SetLimits(session_minutes=30))
    w.do(PlaceBet("b1", 1, "EUR", "casino"))
    w.do(PlaceBet("b2", 1, "EUR", "casino"), advance_ms=20 * MINUTE_MS)
    assert w.code(PlaceBet("b3", 1, "EUR", "casino"), advance_ms=10 * MINUTE_MS) is R.SESSION_LIMIT_EXCEEDED
    # A pause of 30 minutes ends the session.
    assert w.code(PlaceBet("b3", 1, "EUR", "casino"), advance_ms=30 * MINUTE_MS) is R.CREATED


def test_cool_off_and_self_exclusion_refuse_stakes_and_deposits_and_cannot_be_shortened():
    w = funded(cash=5_000)
    w.do(SetLimits(cool_off_until_ms=T0 + DAY_MS))
    assert w.code(PlaceBet("b1", 1, "EUR", "casino")) is R.COOL_OFF_ACTIVE
    assert w.code(RequestDeposit("d1", "p1", 1, "EUR", "card")) is R.COOL_OFF_ACTIVE
    assert w.code(SetLimits(cool_off_until_ms=T0 + 1)) is R.CANNOT_SHORTEN_EXCLUSION
    w.do(SetLimits(self_excluded_until_ms=T0 + 365 * DAY_MS))
    assert w.code(PlayRound("r1", "acme", 1, 0, "EUR", "casino")) is R.SELF_EXCLUDED
    # Withdrawing one's own money stays possible.
    assert w.code(RequestWithdrawal("w1", 100, "EUR", "bank")) is R.ACCEPTED
    assert [a.code for a in w.audit if a.kind == "refusal"] == [
        "cool_off_active", "cool_off_active", "self_excluded"]


def test_deposit_velocity():
    w = funded(cash=0)
    for i in range(3):
        assert w.code(RequestDeposit(f"d{i}", "p1", 10, "EUR", "card")) is R.ACCEPTED
    assert w.code(RequestDeposit("d9", "p1", 10, "EUR", "card")) is R.VELOCITY_LIMIT_EXCEEDED
    assert w.code(RequestDeposit("d9", "p1", 10, "EUR", "card"), advance_ms=3_600_000) is R.ACCEPTED


# ---------------------------------------------------------------- game rounds

def test_a_round_takes_the_stake_and_pays_the_win_in_one_operation():
    w = funded(cash=1_000)
    d = w.do(PlayRound("r1", "acme", 100, 250, "EUR", "casino"), key="round:acme:r1")
    assert d.outcome.body == {"round_id": "r1", "status": "SETTLED", "bet": 100, "win": 250, "cash_delta": 150}
    assert {p.operation_id for p in d.postings} == {"round:acme:r1:p1"}
    assert (w.bal("CASH"), w.bal("HOLD")) == (1_150, 0)
    replay = w.do(PlayRound("r1", "acme", 100, 250, "EUR", "casino"), key="round:acme:r1")
    assert replay.replayed and replay.postings == () and w.bal("CASH") == 1_150
    assert w.code(PlayRound("r2", "acme", 0, 40, "EUR", "casino")) is R.OK  # a free-spin win
    assert w.code(PlayRound("r3", "acme", 5_000, 0, "EUR", "casino")) is R.INSUFFICIENT_FUNDS
    assert_books(w)


def test_usage_keeps_only_current_periods():
    w = funded(cash=5_000)
    w.do(PlaceBet("b1", 10, "EUR", "casino"))
    w.do(PlaceBet("b2", 10, "EUR", "casino"), advance_ms=40 * DAY_MS)
    assert f"bet:{period_key('day', w.now - 40 * DAY_MS)}" not in w.state.usage
    assert w.state.usage[f"bet:{period_key('day', w.now)}"] == 10


def test_calendar_periods():
    assert period_key("day", 0) == "d0"
    assert period_key("week", 4 * DAY_MS) == "w1"  # Monday 1970-01-05 starts week 1
    assert period_key("week", 3 * DAY_MS) == "w0"
    assert period_key("month", T0) == "m2025-11"
    assert period_key("month", 951_782_400_000) == "m2000-02"  # 2000-02-29
    assert period_key("month", 951_868_800_000) == "m2000-03"
