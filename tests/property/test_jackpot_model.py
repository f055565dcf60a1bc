"""The jackpot pool core against a deliberately plain reference model, over random
command sequences for every pool kind, with conservation checked after every step.

The model restates the rules on plain dicts (the contribution split, caps and reserves,
must-drop points, seeded draws, deadlines, reseeding, the payout saga), so a bug must be
made twice, the same way, to pass. A fake wallet answers payout requests the way the
wallet agent will (one credit per idempotency key, a repeat answered again), and the
broker between them duplicates, delays and reorders every message of the saga. At the
end every message is drained: each win is credited exactly once, none is missed."""
from __future__ import annotations

import hashlib
import hmac

from hypothesis import event, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from app.domain.jackpot.chain import ChainHead, verify
from app.domain.jackpot.core import (
    Context, Contribute, CreatePool, JackpotResult, PayoutCredited, PayoutFailed, Reconfigure, RetryPayout, Rules,
    Tick, TierPatch, Trigger, check_ledger, check_pool, conservation, decide, evolve,
)
from app.domain.jackpot.state import CREDITED, FAILED, PAYOUT_REQUESTED, PoolState, TierConfig, payout_key
from tables.pools import decode_state, encode_state

R = JackpotResult
SEED = b"model-server-seed"
SEED_HASH = hashlib.sha256(SEED).hexdigest()
POOL = "jp1"
T0 = 1_000_000
# Credited wins stay in the record for the whole run: the model follows the saga, and the
# short retention of credited wins has its own scenario test.
RULES = Rules(payout_resend_ms=20_000, payout_retry_ms=40_000, max_payout_attempts=3,
              closed_win_retention_ms=10**12)
PERIOD = 60_000
PLAYERS = st.sampled_from(["p1", "p2", "p3", "p4"])
ROUNDS = st.sampled_from([f"r{i}" for i in range(25)])


def draw(message: str, n: int) -> int:
    """The documented draw, restated: HMAC-SHA256, first 8 bytes, rejection sampling."""
    counter = 0
    while True:
        text = message if counter == 0 else f"{message}#{counter}"
        value = int.from_bytes(hmac.new(SEED, text.encode(), hashlib.sha256).digest()[:8], "big")
        if value < (1 << 64) - (1 << 64) % n:
            return value % n
        counter += 1


class Model:
    def __init__(self, kind: str, tiers: list[TierConfig], bps: int) -> None:
        self.kind, self.bps, self.open = kind, bps, True
        self.cfg = {t.name: t for t in tiers}
        self.order = [t.name for t in tiers]
        self.tiers = {name: {"size": 0, "reserve": 0, "cycle": 0, "point": 0} for name in self.order}
        self.contributions = self.seeds = self.payouts = 0
        self.wins: dict[str, dict] = {}
        self.participants: dict[str, list] = {}  # player -> [entries, round]
        self.deadline = T0 + PERIOD if kind == "timed" else 0

    def seed(self, name: str, cycle: int) -> None:
        t, cfg = self.tiers[name], self.cfg[name]
        from_reserve = min(t["reserve"], cfg.seed_minor)
        t["reserve"] -= from_reserve
        self.seeds += cfg.seed_minor - from_reserve
        t.update(size=cfg.seed_minor, cycle=cycle, point=0)
        if cfg.drop_max_minor:
            low, high = cfg.drop_min_minor, cfg.drop_max_minor
            t["point"] = low + draw(f"drop_point|{POOL}|{name}|{cycle}", high - low + 1)

    def drop(self, name: str, trigger_id: str, now: int) -> bool:
        t = self.tiers[name]
        if t["size"] <= 0:
            return False
        self.payouts += t["size"]
        self.wins[trigger_id] = {"amount": t["size"], "state": PAYOUT_REQUESTED, "attempt": 1, "changed": now,
                                 "retryable": False}
        t["size"] = 0
        self.seed(name, t["cycle"] + 1)
        return True


def pool_config(kind: str, data) -> tuple[CreatePool, list[TierConfig]]:
    d = data.draw
    bps = d(st.sampled_from([0, 100, 500, 2_000, 5_000]))
    seed = d(st.integers(0, 2_000))
    cap = d(st.one_of(st.none(), st.integers(1, 3_000)))
    odds = d(st.sampled_from([0, 30_000_000, 150_000_000, 400_000_000]))
    base = dict(pool_id=POOL, kind=kind, brand_ids=("b1", "b2"), region="MT", currency="EUR",
                server_seed_hash=SEED_HASH, contribution_bps=bps)
    if kind == "fixed":
        seed = max(seed, 1)
        command = CreatePool(**base, seed_minor=seed, odds_ppb=odds)
        return command, [TierConfig("main", seed, seed, 10_000, odds)]
    if kind == "progressive":
        cap = None if cap is None else seed + cap
        return CreatePool(**base, seed_minor=seed, cap_minor=cap, odds_ppb=odds), [
            TierConfig("main", seed, cap, 10_000, odds)]
    if kind == "must_drop":
        low = seed + 1 + d(st.integers(0, 1_000))
        high = low + d(st.integers(0, 2_000))
        cap = None if cap is None else high + cap
        return CreatePool(**base, seed_minor=seed, cap_minor=cap, odds_ppb=odds, drop_min_minor=low,
                          drop_max_minor=high), [TierConfig("main", seed, cap, 10_000, odds, low, high)]
    if kind == "timed":
        cap = None if cap is None else seed + cap
        return CreatePool(**base, seed_minor=seed, cap_minor=cap, deadline_ms=T0 + PERIOD, period_ms=PERIOD), [
            TierConfig("main", seed, cap, 10_000, 0)]
    mini_seed = d(st.integers(0, 200))
    grand_low = seed + 1 + d(st.integers(0, 2_000))
    tiers = [TierConfig("mini", mini_seed, None if cap is None else mini_seed + cap, 6_000, 150_000_000),
             TierConfig("major", d(st.integers(0, 1_000)), None, 3_000, 20_000_000),
             TierConfig("grand", seed, None, 1_000, 0, grand_low, grand_low + d(st.integers(0, 3_000)))]
    return CreatePool(**base, tiers=tuple(tiers)), tiers


class JackpotMachine(RuleBasedStateMachine):
    @initialize(kind=st.sampled_from(["fixed", "progressive", "must_drop", "timed", "multi_tier"]), data=st.data())
    def start(self, kind: str, data) -> None:
        self.state = PoolState.empty("dev", POOL)
        self.now = T0
        self.n = 0
        self.ledger: dict = {}
        self.chain: list = []
        self.recorded: list = []  # (command, decision) of keyed successes, for retries
        self.outbox: list = []  # payout requests on their way to the wallet
        self.inbox: list = []  # wallet replies on their way back; a delivered one may come again
        self.credited: dict[str, int] = {}  # the fake wallet: payout key -> amount credited once
        command, tiers = pool_config(kind, data)
        self.m = Model(kind, tiers, command.contribution_bps)
        assert self.run(command) is R.CREATED
        for name in self.m.order:
            self.m.seed(name, 0)

    def run(self, command, key: str = "", seed: bytes = SEED):
        self.now += 1_000
        self.n += 1
        decision = decide(self.state, command, Context("dev", self.now, seed, key, 72 * 3_600_000, RULES))
        self.state = evolve(self.state, decision.events)
        for p in decision.postings:
            assert self.ledger.setdefault((p.operation_id, p.leg), p) == p
        for entry in decision.chain:
            if entry.seq == len(self.chain):
                self.chain.append(entry)
            else:
                assert self.chain[entry.seq] == entry
        self.outbox.extend(decision.payouts)
        self.last = decision
        # Shown by --hypothesis-show-statistics: which paths the runs actually took.
        event(f"{type(command).__name__} -> {decision.outcome.code}")
        if decision.outcome.ok and decision.events and isinstance(command, (Contribute, Trigger)):
            self.recorded.append((command, decision))
        return decision.outcome.code

    # ------------------------------------------------------------ contributions and triggers

    @rule(brand=st.sampled_from(["b1", "b2", "b9"]), region=st.sampled_from(["MT", "MT", "DE"]),
          bet=st.integers(0, 5_000), explicit=st.one_of(st.none(), st.integers(1, 6_000)), player=PLAYERS,
          round_id=ROUNDS)
    def contribute(self, brand, region, bet, explicit, player, round_id) -> None:
        self._contribute(brand, region, bet, explicit, player, round_id)

    @rule(brand=st.sampled_from(["b1", "b2"]), bet=st.integers(1, 5_000),
          explicit=st.one_of(st.none(), st.integers(1, 500)), player=PLAYERS, round_id=ROUNDS)
    def play_round(self, brand, bet, explicit, player, round_id) -> None:
        """Most rounds are ordinary: an eligible brand and region, a positive bet."""
        self._contribute(brand, "MT", bet, None if explicit is None else min(explicit, bet), player, round_id)

    def _contribute(self, brand, region, bet, explicit, player, round_id) -> None:
        code = self.run(Contribute(f"c{self.n}", brand, region, round_id, player, bet, "EUR", explicit))
        m = self.m
        if not m.open:
            assert code is R.POOL_CLOSED
            return
        if brand == "b9":
            assert code is R.BRAND_NOT_IN_POOL
            return
        if region != "MT":
            assert code is R.REGION_NOT_IN_POOL
            return
        if bet < 1 or (explicit is not None and explicit > bet):
            assert code is R.INVALID_CONTRIBUTION
            return
        assert code is R.OK
        # A round after a due deadline first closes the period (the timer's tick may lag).
        won = [trigger_id for trigger_id, _ in self._deadline_drop(self.now)]
        amount = explicit if explicit is not None else bet * m.bps // 10_000
        parts = {name: amount * m.cfg[name].share_bps // 10_000 for name in m.order}
        parts[m.order[0]] += amount - sum(parts.values())
        for name in m.order:
            t, cap = m.tiers[name], m.cfg[name].cap_minor
            limit = t["point"] or cap
            to_pool = parts[name] if limit is None else max(0, min(parts[name], limit - t["size"]))
            t["size"] += to_pool
            t["reserve"] += parts[name] - to_pool
        m.contributions += amount
        if m.kind == "timed":
            entries = m.participants.get(player, [0, ""])[0]
            m.participants[player] = [entries + 1, round_id]
        for name in m.order:
            t, odds = m.tiers[name], m.cfg[name].odds_ppb
            if t["point"] and t["size"] >= t["point"]:
                trigger_id = f"auto-{name}-drop-{t['cycle']}"
            elif odds and draw(f"{POOL}:{round_id}:{name}", 10**9) < odds:
                trigger_id = f"auto-{name}-round-{round_id}"
            else:
                continue
            if trigger_id not in m.wins and m.drop(name, trigger_id, self.now):
                won.append(trigger_id)
        for trigger_id in won:
            event(f"contribution won by {trigger_id.split('-')[2]} ({m.kind})")
        assert [w["trigger_id"] for w in self.last.outcome.body["wins"]] == won
        assert [p.trigger_id for p in self.last.payouts] == won

    @rule(tier=st.sampled_from(["", "", "main", "mini", "major", "grand", "nope"]), player=st.sampled_from(["p1", "p5"]))
    def trigger(self, tier, player) -> None:
        trigger_id = f"t{self.n}"
        code = self.run(Trigger(trigger_id, player, f"manual-{self.n}", "b1", "MT", tier))
        m = self.m
        name = tier or (m.order[0] if len(m.order) == 1 else "")
        if not m.open:
            assert code is R.POOL_CLOSED
        elif name not in m.cfg:
            assert code is R.TIER_NOT_FOUND
        elif m.kind == "timed" or m.cfg[name].drop_max_minor or m.tiers[name]["point"]:
            assert code is R.TRIGGER_NOT_ALLOWED
        elif m.tiers[name]["size"] == 0:
            assert code is R.POOL_EMPTY
        else:
            assert code is R.CREATED
            assert m.drop(name, trigger_id, self.now)

    def _deadline_drop(self, now: int) -> list[tuple[str, int]]:
        """A timed pool's due deadline in the model: the draw among the period's entries."""
        m, expected = self.m, []
        if m.kind == "timed" and m.open and m.deadline <= now:
            deadline = m.deadline
            total = sum(e for e, _ in m.participants.values())
            if total and m.tiers["main"]["size"] > 0:
                index = draw(f"deadline_winner|{POOL}|main|{deadline}", total)
                for player in sorted(m.participants):
                    if index < m.participants[player][0]:
                        break
                    index -= m.participants[player][0]
                trigger_id = f"auto-main-deadline-{deadline}"
                assert m.drop("main", trigger_id, now)
                assert self.state.wins[trigger_id].player_id == player
                expected.append((trigger_id, 1))
                event("deadline drop")
            m.participants = {}
            m.deadline = deadline + PERIOD * ((now - deadline) // PERIOD + 1)
        return expected

    @rule(seconds=st.integers(1, 90))
    def time_passes(self, seconds: int) -> None:
        self.now += seconds * 1_000
        code = self.run(Tick(f"tick{self.n}"))
        assert code is R.OK
        m, now = self.m, self.now
        before = sorted(m.wins)
        expected = self._deadline_drop(now)
        for trigger_id in before:
            w = m.wins[trigger_id]
            if w["state"] == PAYOUT_REQUESTED and w["changed"] + RULES.payout_resend_ms <= now:
                w["changed"] = now
            elif (w["state"] == FAILED and w["retryable"] and w["attempt"] < RULES.max_payout_attempts
                  and w["changed"] + RULES.payout_retry_ms <= now):
                w.update(state=PAYOUT_REQUESTED, attempt=w["attempt"] + 1, changed=now)
            else:
                continue
            expected.append((trigger_id, w["attempt"]))
        assert sorted((p.trigger_id, p.attempt) for p in self.last.payouts) == sorted(expected)

    # ------------------------------------------------------------ the wallet and the broker between

    @precondition(lambda self: self.outbox)
    @rule(data=st.data(), answer=st.sampled_from(["credit", "credit", "fail", "fail_final"]))
    def wallet_handles_a_request(self, data, answer: str) -> None:
        request = self.outbox.pop(data.draw(st.integers(0, len(self.outbox) - 1)))
        key = request.payout_key
        if key in self.credited:
            assert self.credited[key] == request.amount_minor  # same key, same amount, every time
            self.inbox.append(PayoutCredited(request.trigger_id, request.amount_minor))
        elif answer == "credit":
            self.credited[key] = request.amount_minor
            self.inbox.append(PayoutCredited(request.trigger_id, request.amount_minor))
        else:
            self.inbox.append(PayoutFailed(request.trigger_id, request.attempt, "aml_hold", answer == "fail"))

    @precondition(lambda self: self.inbox)
    @rule(data=st.data(), keep_a_copy=st.booleans())
    def broker_delivers_a_reply(self, data, keep_a_copy: bool) -> None:
        index = data.draw(st.integers(0, len(self.inbox) - 1))
        reply = self.inbox[index] if keep_a_copy else self.inbox.pop(index)
        before = self.state
        code = self.run(reply)
        w = self.m.wins[reply.trigger_id]
        if isinstance(reply, PayoutCredited):
            assert code is R.OK
            if w["state"] == CREDITED:
                assert self.state is before
            w["state"] = CREDITED
        elif w["state"] == CREDITED:
            assert code is R.PAYOUT_ALREADY_CREDITED and self.state is before
        elif reply.attempt != w["attempt"]:
            assert code is R.STALE_PAYOUT_MESSAGE and self.state is before
        elif w["state"] == FAILED:
            assert code is R.OK and self.state is before
        else:
            assert code is R.OK
            w.update(state=FAILED, retryable=reply.retryable, changed=self.now)

    @precondition(lambda self: self.m.wins)
    @rule(data=st.data())
    def operator_retries(self, data) -> None:
        trigger_id = data.draw(st.sampled_from(sorted(self.m.wins)))
        code = self.run(RetryPayout(trigger_id), key=f"retry-{self.n}")
        w = self.m.wins[trigger_id]
        if w["state"] == CREDITED:
            assert code is R.PAYOUT_ALREADY_CREDITED
        elif w["state"] != FAILED:
            assert code is R.PAYOUT_NOT_FAILED
        else:
            assert code is R.OK
            w.update(state=PAYOUT_REQUESTED, attempt=w["attempt"] + 1, changed=self.now)

    # ------------------------------------------------------------ retries and configuration

    @precondition(lambda self: self.recorded)
    @rule(data=st.data(), same_body=st.booleans())
    def client_retries(self, data, same_body: bool) -> None:
        command, first = data.draw(st.sampled_from(self.recorded))
        if not same_body:
            command = (Contribute(**{**_fields(command), "bet_minor": command.bet_minor + 1})
                       if isinstance(command, Contribute) else Trigger(**{**_fields(command), "player_id": "p9"}))
        before = self.state
        code = self.run(command)
        assert self.state is before
        if same_body:
            again = self.last
            assert again.replayed and again.outcome == first.outcome
            assert (again.postings, again.payouts, again.audit) == (first.postings, first.payouts, first.audit)
        else:
            assert code is R.IDEMPOTENCY_CONFLICT and self.last.payouts == ()

    @rule(now=st.integers(0, 3))
    def toggle_status(self, now: int) -> None:
        if now and self.m.open:
            return  # pools close rarely and reopen soon, so most steps find the pool open
        status = "closed" if self.m.open else "open"
        assert self.run(Reconfigure(status=status, reason="operator"), key=f"cfg-{self.n}") is R.OK
        self.m.open = not self.m.open

    @precondition(lambda self: self.m.kind in ("progressive", "multi_tier"))
    @rule(cap=st.one_of(st.none(), st.integers(0, 4_000)), now=st.integers(0, 2))
    def change_cap(self, cap, now: int) -> None:
        if now:
            return
        name = self.m.order[0]
        patch = TierPatch(name, remove_cap=True) if cap is None else TierPatch(name, cap_minor=cap)
        code = self.run(Reconfigure(tiers=(patch,)), key=f"cap-{self.n}")
        cfg = self.m.cfg[name]
        if cap is not None and cap < max(cfg.seed_minor, 1):
            assert code is R.INVALID_CONFIG
            return
        assert code is R.OK
        self.m.cfg[name] = TierConfig(cfg.name, cfg.seed_minor, cap, cfg.share_bps, cfg.odds_ppb,
                                      cfg.drop_min_minor, cfg.drop_max_minor)
        t = self.m.tiers[name]
        if cap is not None and t["size"] > cap:
            t["reserve"] += t["size"] - cap
            t["size"] = cap

    # ------------------------------------------------------------ invariants

    @invariant()
    def record_matches_the_model_and_money_is_conserved(self) -> None:
        if not hasattr(self, "state"):
            return
        m, s = self.m, self.state
        for name, t in m.tiers.items():
            got = s.tiers[name]
            assert (got.size_minor, got.reserve_minor, got.cycle, got.drop_point_minor) == (
                t["size"], t["reserve"], t["cycle"], t["point"]), name
        figures = conservation(s)
        assert (figures.contributions_minor, figures.seeds_minor, figures.payouts_minor) == (
            m.contributions, m.seeds, m.payouts)
        assert figures.balanced
        assert {k: (w.amount_minor, w.state, w.attempt) for k, w in s.wins.items()} == {
            k: (w["amount"], w["state"], w["attempt"]) for k, w in m.wins.items()}
        assert {p: x.entries for p, x in s.participants.items()} == {p: e for p, (e, _) in m.participants.items()}
        assert s.deadline_ms == m.deadline and (s.config.status == "open") == m.open
        check_pool(s)
        check_ledger(s, self.ledger.values())

    @invariant()
    def chain_verifies_and_record_survives_its_encoding(self) -> None:
        if not hasattr(self, "state"):
            return
        assert verify(self.chain, ChainHead(self.state.chain_seq, self.state.chain_hash)) is None
        assert decode_state(encode_state(self.state)) == self.state

    @invariant()
    def the_wallet_only_ever_credits_real_wins(self) -> None:
        if not hasattr(self, "state"):
            return
        wins = {payout_key(POOL, k): w for k, w in self.state.wins.items()}
        for key, amount in self.credited.items():
            assert wins[key].amount_minor == amount
        for key, win in wins.items():
            if win.state == CREDITED:
                assert key in self.credited

    def teardown(self) -> None:
        """Drain the saga: the wallet now credits everything, the broker delivers every
        message, the timer fires, the operator retries what gave up. Then every win is
        credited exactly once and the wallet paid out exactly what the pool booked."""
        if not hasattr(self, "state"):
            return
        for _ in range(20):
            open_wins = {k: w for k, w in self.state.wins.items() if w.state != CREDITED}
            if not open_wins:
                break
            for trigger_id, w in sorted(open_wins.items()):
                if w.state == FAILED and (not w.retryable or w.attempt >= RULES.max_payout_attempts):
                    assert self.run(RetryPayout(trigger_id), key=f"drain-{self.n}") is R.OK
            self.now += RULES.payout_retry_ms + RULES.payout_resend_ms
            self.run(Tick())
            while self.outbox:
                request = self.outbox.pop()
                self.credited.setdefault(request.payout_key, request.amount_minor)
                assert self.credited[request.payout_key] == request.amount_minor
                self.inbox.append(PayoutCredited(request.trigger_id, request.amount_minor))
            while self.inbox:
                self.run(self.inbox.pop(0))
        assert all(w.state == CREDITED for w in self.state.wins.values())
        assert self.credited == {payout_key(POOL, k): w.amount_minor for k, w in self.state.wins.items()}
        assert sum(self.credited.values()) == self.state.totals.payouts_minor
        check_ledger(self.state, self.ledger.values())


def _fields(command) -> dict:
    return {f: getattr(command, f) for f in command.__dataclass_fields__}


TestJackpotMachine = JackpotMachine.TestCase
TestJackpotMachine.settings = settings(max_examples=400, stateful_step_count=50, deadline=None)
