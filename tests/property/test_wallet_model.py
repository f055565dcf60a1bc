"""The wallet core against a deliberately simple reference model, over thousands of
random command sequences, with the invariants checked after every step."""
from __future__ import annotations

from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from app.domain.ledger import account_deltas, check_deltas_balance
from app.domain.wallet.codec import decode_state, encode_state
from app.domain.wallet.core import (
    ApplyPspResult, Context, CreatePlayer, RequestDeposit, WalletResult, WalletState, check_wallet, decide, evolve,
)

DEPOSIT_IDS = st.sampled_from([f"d{i}" for i in range(6)])
EVENT_IDS = st.sampled_from([f"e{i}" for i in range(10)])
AMOUNTS = st.integers(min_value=1, max_value=50_000)
RETENTION_MS = 72 * 3_600_000


class Model:
    """What the wallet should do, written as plainly as possible."""

    def __init__(self) -> None:
        self.registered = False
        self.cash = 0
        self.deposits: dict[str, tuple[int, str]] = {}  # id -> (amount, state)
        self.answers: dict[str, tuple[str, object]] = {}  # op key -> (request, code)


class WalletMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.state = WalletState.empty("dev", "p1")
        self.model = Model()
        self.now_ms = 0
        self.ledger: dict[tuple[str, int], object] = {}

    def run(self, command, key: str, request: str) -> WalletResult:
        self.now_ms += 1_000
        decision = decide(self.state, command, Context("dev", key, request, self.now_ms, RETENTION_MS))
        self.state = evolve(self.state, decision.events)
        for p in decision.postings:
            # The ledger keeps the first row of each (operation, leg), as ON CONFLICT does.
            self.ledger.setdefault((p.operation_id, p.leg), p)
        code = decision.outcome.code
        if key in self.model.answers:
            first_request, first_code = self.model.answers[key]
            expected = first_code if first_request == request else WalletResult.IDEMPOTENCY_CONFLICT
            assert code is expected, (key, code, expected)
        return code

    def remember(self, key: str, request: str, code: WalletResult) -> None:
        # Only successes are remembered; a rejected request is decided afresh next time.
        if code in (WalletResult.CREATED, WalletResult.ACCEPTED, WalletResult.OK):
            self.model.answers.setdefault(key, (request, code))

    @rule(currency=st.sampled_from(["EUR", "EUR", "USD"]))
    def create_player(self, currency: str) -> None:
        key, request = "player:p1", f"create:{currency}"
        known = key in self.model.answers
        code = self.run(CreatePlayer("p1", currency, "DE"), key, request)
        if not known:
            assert code is WalletResult.CREATED
            self.model.registered = True
            self.remember(key, request, code)

    @rule(deposit_id=DEPOSIT_IDS, amount=AMOUNTS, key_suffix=st.sampled_from(["a", "b"]))
    def request_deposit(self, deposit_id: str, amount: int, key_suffix: str) -> None:
        key, request = f"deposit:{deposit_id}{key_suffix}", f"{deposit_id}:{amount}"
        known = key in self.model.answers
        code = self.run(RequestDeposit(deposit_id, "p1", amount, self.state.currency or "EUR", "card"), key, request)
        if known:
            return
        if not self.model.registered:
            assert code is WalletResult.PLAYER_NOT_FOUND
        elif deposit_id in self.model.deposits:
            assert code is WalletResult.DEPOSIT_EXISTS
        else:
            assert code is WalletResult.ACCEPTED
            self.model.deposits[deposit_id] = (amount, "PENDING")
        self.remember(key, request, code)

    @rule(event_id=EVENT_IDS, deposit_id=DEPOSIT_IDS, succeeded=st.booleans(), fee=st.integers(0, 60_000),
          exact=st.booleans())
    def psp_result(self, event_id: str, deposit_id: str, succeeded: bool, fee: int, exact: bool) -> None:
        entry = self.model.deposits.get(deposit_id)
        amount = entry[0] if (entry and exact) else 777
        status = "SUCCEEDED" if succeeded else "FAILED"
        key, request = f"psp:sandbox:{event_id}", f"{deposit_id}:{status}:{amount}:{fee}"
        known = key in self.model.answers
        currency = self.state.currency or "EUR"
        code = self.run(ApplyPspResult("sandbox", event_id, deposit_id, status, amount, currency, fee), key, request)
        if known:
            return
        if not self.model.registered:
            expected = WalletResult.PLAYER_NOT_FOUND
        elif entry is None:
            expected = WalletResult.DEPOSIT_NOT_FOUND
        elif entry[1] != "PENDING":
            expected = WalletResult.DEPOSIT_ALREADY_FINAL
        elif amount != entry[0]:
            expected = WalletResult.AMOUNT_MISMATCH
        elif not succeeded:
            expected = WalletResult.OK
            self.model.deposits[deposit_id] = (amount, "FAILED")
        elif fee > amount:
            expected = WalletResult.FEE_EXCEEDS_AMOUNT
        else:
            expected = WalletResult.OK
            self.model.deposits[deposit_id] = (amount, "SUCCEEDED")
            self.model.cash += amount - fee
        assert code is expected, (code, expected)
        self.remember(key, request, code)

    @invariant()
    def balances_match_the_model_and_the_ledger(self) -> None:
        if not hasattr(self, "state"):
            return
        check_wallet(self.state)
        cash = self.state.balance("CASH", self.state.currency or "EUR")
        assert cash == self.model.cash
        deltas = account_deltas(self.ledger.values())
        check_deltas_balance(deltas)
        assert deltas.get(f"player:p1:CASH:{self.state.currency or 'EUR'}", 0) == cash
        assert {k: v.state for k, v in self.state.deposits.items()} == {k: s for k, (_, s) in self.model.deposits.items()}

    @invariant()
    def record_survives_the_changelog_encoding(self) -> None:
        if hasattr(self, "state"):
            assert decode_state(encode_state(self.state)) == self.state


TestWalletMachine = WalletMachine.TestCase
TestWalletMachine.settings = settings(max_examples=1000, stateful_step_count=40, deadline=None)
