"""The wallet core against a deliberately simple reference model, over thousands of
random command sequences, with the invariants checked after every step.

The model re-implements the rules plainly (spend order, holds, captures, expiry,
withdrawals, bonus turnover), so a bug must be made twice, the same way, to pass."""
from __future__ import annotations

import dataclasses

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from app.domain.ledger import account_deltas, check_deltas_balance
from app.domain.wallet.core import (
    ApplyPspResult, ApplyWithdrawalResult, CancelBet, CaptureHold, Context, CreatePlayer, GrantBonus, PlaceBet,
    RequestDeposit, RequestWithdrawal, Rules, SetPlayerStatus, SettleBet, Tick, WalletResult, WalletState,
    CLAIMING, check_wallet, claim_of, decide, evolve,
)
from tables.wallets import decode_state, encode_state

R = WalletResult
BET_IDS = st.sampled_from([f"b{i}" for i in range(5)])
AMOUNTS = st.integers(min_value=1, max_value=3_000)
RETENTION_MS = 72 * 3_600_000
# A small window, so that answers and closed items leave the record within a few steps and
# the model's storage (answers and claims, as the agent keeps them) is exercised.
RULES = Rules(bet_hold_ttl_ms=30_000, withdrawal_hold_ttl_ms=60_000, max_deposits_per_hour=10**6,
              max_withdrawals_per_hour=10**6, operation_window_ms=5_000, operation_window_count=3,
              closed_kept_per_kind=2)
ORDER = {"casino": (("WAGER", ""), ("BONUS", ""), ("CASH", "")), "sports": (("CASH", ""), ("BONUS", "WAGER"))}
SUCCESS = (R.CREATED, R.ACCEPTED, R.OK)


class Model:
    def __init__(self) -> None:
        self.registered = False
        self.bal = {"CASH": 0, "BONUS": 0, "WAGER": 0, "HOLD": 0}
        self.deposits: dict[str, tuple[int, str]] = {}
        # bet id -> [remaining sources as [wallet, amount], state, expires_at_ms, stake]
        self.bets: dict[str, list] = {}
        self.withdrawals: dict[str, list] = {}  # id -> [amount, state, expires_at_ms]
        self.wager_required = 0
        self.bonus_active = False


class WalletMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.state = WalletState.empty("dev", "p1")
        self.m = Model()
        self.now = 1_000_000
        self.n = 0
        self.ledger: dict = {}
        self.sent: list = []  # (command, key, request, code) of successes, for retries
        self.answers: dict = {}  # every answer ever recorded, as storage keeps them
        self.claims: set[str] = set()

    def prepared(self, command, key: str) -> tuple[WalletState, frozenset[str]]:
        """What the agent hands decide: the record, with the stored answer of the key when
        the record's window no longer has it, and the claims of ids already taken."""
        state = self.state
        if key and key not in state.operations and key in self.answers:
            state = dataclasses.replace(state, operations={**state.operations, key: self.answers[key]})
        claim = claim_of(command)
        return state, frozenset({claim} & self.claims) if claim else frozenset()

    def run(self, command, key: str | None = None, request: str = "r") -> R:
        self.now += 1_000
        self.n += 1
        key = f"op{self.n}" if key is None else key
        state, claimed = self.prepared(command, key)
        decision = decide(state, command, Context("dev", key, request, self.now, RETENTION_MS, RULES, claimed))
        self.state = evolve(self.state, decision.events)
        for p in decision.postings:
            self.ledger.setdefault((p.operation_id, p.leg), p)
        if decision.outcome.code in SUCCESS and key:
            if not decision.replayed:
                self.answers[key] = self.state.operations[key]
            if isinstance(command, CLAIMING):
                self.claims.add(claim_of(command))
            self.sent.append((command, key, request, decision.outcome))
        return decision.outcome.code

    # ------------------------------------------------------------ player and money in

    @rule()
    def create_player(self) -> None:
        code = self.run(CreatePlayer("p1", "EUR", "DE"), key="player:p1", request="EUR")
        assert code is R.CREATED
        self.m.registered = True

    @rule(amount=AMOUNTS, fee=st.integers(0, 100), succeed=st.booleans())
    def deposit(self, amount: int, fee: int, succeed: bool) -> None:
        deposit_id = f"d{self.n}"
        code = self.run(RequestDeposit(deposit_id, "p1", amount, "EUR", "card"))
        if not self.m.registered:
            assert code is R.PLAYER_NOT_FOUND
            return
        assert code is R.ACCEPTED
        status = "SUCCEEDED" if succeed else "FAILED"
        code = self.run(ApplyPspResult("sandbox", f"e{self.n}", deposit_id, status, amount, "EUR", min(fee, amount)))
        assert code is R.OK
        if succeed:
            self.m.bal["CASH"] += amount - min(fee, amount)

    @precondition(lambda self: self.m.registered and not self.m.bonus_active)
    @rule(amount=AMOUNTS, multiple=st.integers(0, 3))
    def grant_bonus(self, amount: int, multiple: int) -> None:
        code = self.run(GrantBonus(f"bo{self.n}", amount, "EUR", amount * multiple, 10**13))
        assert code is R.CREATED
        self.m.bal["BONUS"] += amount
        self.m.wager_required = amount * multiple
        self.m.bonus_active = True
        if multiple == 0:
            # Nothing to wager: it converts on the next settled stake, like any met bonus.
            self.m.wager_required = 0

    # ------------------------------------------------------------ bets and holds

    @rule(bet_id=BET_IDS, amount=AMOUNTS, policy=st.sampled_from(["casino", "sports"]))
    def place_bet(self, bet_id: str, amount: int, policy: str) -> None:
        code = self.run(PlaceBet(bet_id, amount, "EUR", policy))
        if not self.m.registered:
            assert code is R.PLAYER_NOT_FOUND
            return
        if bet_id in self.m.bets:
            assert code is R.BET_EXISTS
            return
        spendable = sum(self.m.bal[w] for w, _ in ORDER[policy])
        if spendable < amount:
            assert code is R.INSUFFICIENT_FUNDS
            return
        assert code is R.CREATED
        left, sources = amount, []
        for wallet, _via in ORDER[policy]:
            take = min(left, self.m.bal[wallet])
            if take:
                self.m.bal[wallet] -= take
                sources.append([wallet, take])
                left -= take
        self.m.bal["HOLD"] += amount
        self.m.bets[bet_id] = [sources, "HELD", self.now + RULES.bet_hold_ttl_ms, amount]

    def _open(self, bet_id: str) -> list | None:
        bet = self.m.bets.get(bet_id)
        return bet if bet is not None and bet[1] == "HELD" else None

    @rule(bet_id=BET_IDS, win=st.booleans(), payout=AMOUNTS)
    def settle_bet(self, bet_id: str, win: bool, payout: int) -> None:
        # A closed bet may have left the record's window: only its claim says it existed,
        # and its hold is answered closed, whatever closed it.
        in_record = f"bet:{bet_id}" in self.state.holds
        code = self.run(SettleBet(bet_id, "WIN" if win else "LOSS", payout if win else 0))
        bet = self.m.bets.get(bet_id)
        if not self.m.registered:
            assert code is R.PLAYER_NOT_FOUND
        elif bet is None:
            assert code is R.BET_NOT_FOUND
        elif not in_record:
            assert bet[1] != "HELD" and code is R.HOLD_NOT_OPEN
        elif bet[1] == "SETTLED":
            assert code is R.BET_ALREADY_SETTLED
        elif bet[1] != "HELD":
            assert code is R.HOLD_NOT_OPEN
        else:
            assert code is R.OK
            self.m.bal["HOLD"] -= sum(a for _, a in bet[0])
            bet[0], bet[1] = [], "SETTLED"
            self.m.bal["CASH"] += payout if win else 0
            self._turnover(bet[3])

    def _turnover(self, stake: int) -> None:
        if not self.m.bonus_active:
            return
        self.m.wager_required -= min(stake, self.m.wager_required)
        if self.m.wager_required == 0:
            self.m.bal["CASH"] += self.m.bal["BONUS"]
            self.m.bal["BONUS"] = 0
            self.m.bonus_active = False

    @rule(bet_id=BET_IDS)
    def cancel_bet(self, bet_id: str) -> None:
        code = self.run(CancelBet(bet_id))
        bet = self._open(bet_id)
        if bet is None:
            assert code is not R.OK
            return
        assert code is R.OK
        for wallet, amount in bet[0]:
            self.m.bal[wallet] += amount
            self.m.bal["HOLD"] -= amount
        bet[0], bet[1] = [], "RELEASED"

    @rule(bet_id=BET_IDS, amount=AMOUNTS)
    def capture_any(self, bet_id: str, amount: int) -> None:
        self.capture(bet_id, amount)

    @precondition(lambda self: any(b[1] == "HELD" for b in self.m.bets.values()))
    @rule(data=st.data())
    def capture_open(self, data) -> None:
        # Most captures target a bet that is open and ask for part of what it holds:
        # that is where the order in which sources are consumed shows.
        bet_id = data.draw(st.sampled_from(sorted(k for k, b in self.m.bets.items() if b[1] == "HELD")))
        held = sum(a for _, a in self.m.bets[bet_id][0])
        self.capture(bet_id, data.draw(st.integers(1, held + 2)))

    def capture(self, bet_id: str, amount: int) -> None:
        code = self.run(CaptureHold(f"bet:{bet_id}", amount))
        bet = self._open(bet_id)
        if bet is None:
            assert code in (R.HOLD_NOT_FOUND, R.HOLD_NOT_OPEN, R.PLAYER_NOT_FOUND)
            return
        held = sum(a for _, a in bet[0])
        if amount > held:
            assert code is R.CAPTURE_EXCEEDS_HOLD
            return
        assert code is R.OK
        self.m.bal["HOLD"] -= amount
        left, rest = amount, []
        for wallet, a in bet[0]:
            take = min(a, left)
            left -= take
            if a - take:
                rest.append([wallet, a - take])
        bet[0] = rest
        if not rest:
            bet[1] = "CAPTURED"

    @rule(seconds=st.integers(1, 90))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds * 1_000
        code = self.run(Tick(), key="")
        assert code is R.OK
        for bet in self.m.bets.values():
            if bet[1] == "HELD" and bet[2] <= self.now:
                for wallet, amount in bet[0]:
                    self.m.bal[wallet] += amount
                    self.m.bal["HOLD"] -= amount
                bet[0], bet[1] = [], "EXPIRED"
        for w in self.m.withdrawals.values():
            if w[1] == "PENDING" and w[2] <= self.now:
                self.m.bal["CASH"] += w[0]
                self.m.bal["HOLD"] -= w[0]
                w[1] = "EXPIRED"

    # ------------------------------------------------------------ withdrawals

    @precondition(lambda self: self.m.registered)
    @rule(amount=AMOUNTS, verified=st.booleans())
    def withdraw(self, amount: int, verified: bool) -> None:
        self.run(SetPlayerStatus("VERIFIED" if verified else "PENDING", False), key="")
        withdrawal_id = f"w{self.n}"
        code = self.run(RequestWithdrawal(withdrawal_id, amount, "EUR", "bank"))
        if not verified:
            assert code is R.KYC_REQUIRED
        elif self.m.bal["CASH"] < amount:
            assert code is R.INSUFFICIENT_FUNDS
        else:
            assert code is R.ACCEPTED
            self.m.bal["CASH"] -= amount
            self.m.bal["HOLD"] += amount
            self.m.withdrawals[withdrawal_id] = [amount, "PENDING", self.now + RULES.withdrawal_hold_ttl_ms]

    @precondition(lambda self: any(w[1] == "PENDING" for w in self.m.withdrawals.values()))
    @rule(succeed=st.booleans(), data=st.data())
    def withdrawal_result(self, succeed: bool, data) -> None:
        pending = sorted(k for k, w in self.m.withdrawals.items() if w[1] == "PENDING")
        withdrawal_id = data.draw(st.sampled_from(pending))
        amount = self.m.withdrawals[withdrawal_id][0]
        status = "SUCCEEDED" if succeed else "FAILED"
        code = self.run(ApplyWithdrawalResult("sandbox", f"we{self.n}", withdrawal_id, status, amount, "EUR", 0))
        assert code is R.OK
        self.m.bal["HOLD"] -= amount
        if not succeed:
            self.m.bal["CASH"] += amount
        self.m.withdrawals[withdrawal_id][1] = status

    # ------------------------------------------------------------ retries

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), same_body=st.booleans())
    def retry(self, data, same_body: bool) -> None:
        command, key, request, outcome = data.draw(st.sampled_from(self.sent))
        before = self.state
        self.n += 1
        self.now += 1_000
        state, claimed = self.prepared(command, key)
        decision = decide(state, command, Context("dev", key, request if same_body else request + "x",
                                                  self.now, RETENTION_MS, RULES, claimed))
        assert decision.events == ()
        if same_body:
            assert decision.replayed and decision.outcome == outcome
        else:
            assert decision.outcome.code is R.IDEMPOTENCY_CONFLICT and decision.postings == ()
        for p in decision.postings:
            assert self.ledger[(p.operation_id, p.leg)] == p  # a replay re-emits exactly the first postings
        assert self.state is before

    # ------------------------------------------------------------ invariants

    @invariant()
    def balances_match_the_model_and_the_ledger(self) -> None:
        if not hasattr(self, "state"):
            return
        check_wallet(self.state)
        for wallet, amount in self.m.bal.items():
            assert self.state.balance(wallet, "EUR") == amount, (wallet, self.state.balance(wallet, "EUR"), amount)
            assert amount >= 0
        deltas = account_deltas(self.ledger.values())
        check_deltas_balance(deltas)
        for wallet, amount in self.m.bal.items():
            assert deltas.get(f"player:p1:{wallet}:EUR", 0) == amount, wallet
        assert self.m.bal["HOLD"] == sum(a for b in self.m.bets.values() for _, a in b[0]) + sum(
            w[0] for w in self.m.withdrawals.values() if w[1] == "PENDING")

    @invariant()
    def holds_withdrawals_and_bonus_match_the_model(self) -> None:
        if not hasattr(self, "state"):
            return
        # A closed item may have left the record's window; an open one never does.
        for bet_id, (sources, state, _, _) in self.m.bets.items():
            hold = self.state.holds.get(f"bet:{bet_id}")
            if hold is None:
                assert state != "HELD", bet_id
                continue
            assert (hold.sources, hold.state) == (tuple((w, a) for w, a in sources), state), bet_id
        for withdrawal_id, (_, state, _) in self.m.withdrawals.items():
            withdrawal = self.state.withdrawals.get(withdrawal_id)
            assert state != "PENDING" if withdrawal is None else withdrawal.state == state
        active = [b for b in self.state.bonuses.values() if b.state == "ACTIVE"]
        assert bool(active) == self.m.bonus_active
        assert sum(b.wager_required_minor for b in active) == (self.m.wager_required if self.m.bonus_active else 0)

    @invariant()
    def record_survives_the_changelog_encoding(self) -> None:
        if hasattr(self, "state"):
            assert decode_state(encode_state(self.state)) == self.state


TestWalletMachine = WalletMachine.TestCase
TestWalletMachine.settings = settings(max_examples=1000, stateful_step_count=40, deadline=None)
