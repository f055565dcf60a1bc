"""Table-driven scenarios of the jackpot pool core: every pool kind, isolation per
licence, the postings of every money movement, and every rejection.

Each World keeps every posting ever emitted (as the ledger would, deduplicated on
(operation_id, leg)) and every audit chain entry; after each step it checks that the
ledger and the pool record agree and conserve money, that the chain verifies up to the
record's head, and that the record survives its changelog encoding."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest

from app.domain.errors import InvariantViolation
from app.domain.jackpot.chain import ChainHead, verify
from app.domain.jackpot.core import (
    CheckCandidate, Conservation, Context, Contribute, CreatePool, JackpotResult, PayoutCredited, PayoutFailed, Reconfigure,
    RetryPayout, Rules, Tick, TierPatch, Trigger, chain_entry_from_audit, check_conservation, check_ledger,
    already_applied, check_pool, conservation, decide, evolve, ledger_conservation, pool_view, split_contribution, validate_config,
)
from app.domain.jackpot.rng import deadline_winner_index, round_wins, verify_reveal
from app.domain.jackpot.state import CREDITED, MAIN_TIER, PoolState, TierConfig, TierState, Totals
from app.domain.ledger import Posting
from tables.pools import decode_state, encode_state

R = JackpotResult
SEED = b"server-seed-for-tests-0001"
SEED_HASH = hashlib.sha256(SEED).hexdigest()
OTHER_SEED = b"not-the-committed-seed"
T0 = 1_763_000_000_000
HOUR_MS = 3_600_000
RULES = Rules(payout_resend_ms=30_000, payout_retry_ms=60_000, max_payout_attempts=3)

LIABILITY = "system:JACKPOT_LIABILITY:pool1:EUR"
RESERVE = "system:JACKPOT_LIABILITY:pool1:reserve:EUR"
SEED_FUND = "system:ADJUSTMENTS:jackpot_seed:EUR"
PAYOUTS = "system:PAYOUTS:jackpot:EUR"
FROM_B1 = "system:JACKPOT_CONTRIBUTIONS:b1:EUR"


class World:
    """One pool's record plus everything the agent would have emitted for it."""

    def __init__(self, pool_id: str = "pool1") -> None:
        self.state = PoolState.empty("dev", pool_id)
        self.now = T0
        self.ledger: dict[tuple[str, int], Posting] = {}
        self.chain: list = []
        self.requests: list = []
        self.n = 0

    def ctx(self, seed: bytes = SEED, key: str = "", retention_ms: int = 72 * HOUR_MS) -> Context:
        return Context("dev", self.now, seed, key, retention_ms, RULES)

    def do(self, command, advance_ms: int = 1_000, seed: bytes = SEED, key: str | None = None,
           retention_ms: int = 72 * HOUR_MS):
        self.now += advance_ms
        self.n += 1
        if key is None:
            key = f"admin-{self.n}" if isinstance(command, (Reconfigure, RetryPayout)) else ""
        decision = decide(self.state, command, self.ctx(seed, key, retention_ms))
        self.state = evolve(self.state, decision.events)
        for p in decision.postings:
            assert self.ledger.setdefault((p.operation_id, p.leg), p) == p
        for entry in decision.chain:
            if entry.seq == len(self.chain):
                self.chain.append(entry)
            else:
                assert self.chain[entry.seq] == entry  # a replay re-emits the same entry
        self.requests.extend(decision.payouts)
        assert decode_state(encode_state(self.state)) == self.state
        if self.state.exists:
            check_ledger(self.state, self.ledger.values())
            assert verify(self.chain, ChainHead(self.state.chain_seq, self.state.chain_hash)) is None
        return decision

    def code(self, command, **kw) -> R:
        return self.do(command, **kw).outcome.code

    def tier(self, name: str = MAIN_TIER) -> TierState:
        return self.state.tiers[name]

    def contribute(self, bet: int = 1_000, brand: str = "b1", region: str = "MT", player: str = "p1",
                   round_id: str | None = None, amount: int | None = None, cid: str | None = None, **kw):
        self.n += 1
        return self.do(Contribute(cid or f"c{self.n}", brand, region, round_id or f"r{self.n}", player, bet, "EUR",
                                  amount), **kw)

    def kinds(self, kind: str) -> list:
        return [e for e in self.chain if e.kind == kind]


def create(kind: str = "progressive", pool_id: str = "pool1", **overrides) -> CreatePool:
    fields = {
        "fixed": dict(seed_minor=5_000, contribution_bps=100),
        "progressive": dict(seed_minor=1_000, cap_minor=1_500, contribution_bps=500),
        "must_drop": dict(seed_minor=1_000, contribution_bps=1_000, drop_min_minor=5_000, drop_max_minor=6_000),
        "timed": dict(seed_minor=1_000, contribution_bps=100, deadline_ms=T0 + 60_000, period_ms=60_000),
        "multi_tier": dict(contribution_bps=1_000, tiers=(
            TierConfig("mini", 100, 300, 6_000, 300_000_000),
            TierConfig("major", 1_000, None, 3_000, 20_000_000),
            TierConfig("grand", 10_000, 20_000, 1_000, 0, 12_000, 15_000),
        )),
    }[kind]
    return CreatePool(**{"pool_id": pool_id, "kind": kind, "brand_ids": ("b1",), "region": "MT",
                         "currency": "EUR", "server_seed_hash": SEED_HASH, **fields, **overrides})


def world(kind: str = "progressive", **overrides) -> World:
    w = World()
    assert w.code(create(kind, **overrides)) is R.CREATED
    return w


def legs(decision) -> list[tuple]:
    return [(p.operation_id, p.leg, p.debit_account, p.credit_account, p.amount_minor, p.category)
            for p in decision.postings]


# ---------------------------------------------------------------- rejections

def closed_world() -> World:
    w = world()
    assert w.code(Reconfigure(status="closed")) is R.OK
    return w


def credited_world() -> World:
    w = world()
    w.do(Trigger("t1", "p1", "r1", "b1", "MT"))
    w.do(PayoutCredited("t1", 1_000))
    return w


def requested_world() -> World:
    w = world()
    w.do(Trigger("t1", "p1", "r1", "b1", "MT"))
    return w


def trigger_pruned_world() -> World:
    """A trigger whose operation id has aged out while its win is still unpaid."""
    w = requested_world()
    w.contribute(advance_ms=73 * HOUR_MS)
    assert "trigger:t1" not in w.state.operations and "t1" in w.state.wins
    return w


def contributed_world() -> World:
    w = world()
    w.contribute(cid="c-dup", bet=1_000)
    return w


def contribution(bet: int = 1_000, brand: str = "b1", region: str = "MT", currency: str = "EUR",
                 amount: int | None = None, cid: str = "c-new", round_id: str = "r-new",
                 contribution_currency: str = "") -> Contribute:
    return Contribute(cid, brand, region, round_id, "p1", bet, currency, amount, contribution_currency)


def trigger(trigger_id: str = "t-new", brand: str = "b1", region: str = "MT", tier: str = "", player: str = "p1"):
    return Trigger(trigger_id, player, "r1", brand, region, tier)


TWO_TIERS = (TierConfig("low", 0, None, 5_000), TierConfig("high", 0, None, 5_000))

INVALID_CONFIGS = [
    ("unknown kind", CreatePool("pool1", "lottery", ("b1",), "MT", "EUR", SEED_HASH)),
    ("no brands", create(brand_ids=())),
    ("duplicate brands", create(brand_ids=("b1", "b1"))),
    ("brand with a colon", create(brand_ids=("b:1",))),
    ("no region", create(region="")),
    ("lowercase currency", create(currency="eur")),
    ("bps above 10000", create(contribution_bps=10_001)),
    ("negative bps", create(contribution_bps=-1)),
    ("seed hash not hex", create(server_seed_hash="xyz")),
    ("min bet zero", create(min_bet_minor=0)),
    ("negative seed", create(seed_minor=-1)),
    ("float seed", create(seed_minor=1_000.0)),
    ("cap below seed", create(cap_minor=999)),
    ("odds above one", create(odds_ppb=10**9 + 1)),
    ("progressive with a drop range", create(drop_min_minor=2_000, drop_max_minor=3_000, cap_minor=None)),
    ("progressive with a deadline", create(deadline_ms=T0, period_ms=1)),
    ("progressive with tiers", create(tiers=TWO_TIERS)),
    ("fixed without a prize", create("fixed", seed_minor=0)),
    ("fixed with a cap above the prize", create("fixed", cap_minor=6_000)),
    ("must_drop without a range", create("must_drop", drop_min_minor=0, drop_max_minor=0)),
    ("must_drop range starting at the seed", create("must_drop", drop_min_minor=1_000)),
    ("must_drop range reversed", create("must_drop", drop_min_minor=6_000, drop_max_minor=5_000)),
    ("must_drop range above the cap", create("must_drop", cap_minor=5_500)),
    ("timed without a deadline", create("timed", deadline_ms=0)),
    ("timed without a period", create("timed", period_ms=0)),
    ("timed with odds", create("timed", odds_ppb=1)),
    ("multi_tier with one tier", create("multi_tier", tiers=(TierConfig("only", 0, None, 10_000),))),
    ("multi_tier shares not 10000", create("multi_tier", tiers=(TierConfig("a", 0, None, 5_000),
                                                                 TierConfig("b", 0, None, 4_999)))),
    ("multi_tier duplicate names", create("multi_tier", tiers=(TierConfig("a", 0, None, 5_000),
                                                                TierConfig("a", 0, None, 5_000)))),
    ("multi_tier bad tier name", create("multi_tier", tiers=(TierConfig("Grand-1", 0, None, 5_000),
                                                              TierConfig("b", 0, None, 5_000)))),
    ("multi_tier tier named reserve", create("multi_tier", tiers=(TierConfig("reserve", 0, None, 5_000),
                                                                   TierConfig("b", 0, None, 5_000)))),
    ("multi_tier with a pool-level seed", create("multi_tier", seed_minor=5)),
]

REJECTIONS = [
    *[(f"create: {name}", World, command, R.INVALID_CONFIG) for name, command in INVALID_CONFIGS],
    ("create over an existing pool", world, create(seed_minor=2_000), R.POOL_EXISTS),
    ("create over a pool whose create has aged out", trigger_pruned_world, create(), R.POOL_EXISTS),
    ("contribute to no pool", World, contribution(), R.POOL_NOT_FOUND),
    ("trigger on no pool", World, trigger(), R.POOL_NOT_FOUND),
    ("tick on no pool", World, Tick(), R.POOL_NOT_FOUND),
    ("bet in another currency", world, contribution(currency="USD"), R.CURRENCY_MISMATCH),
    ("contribution in another currency", world, contribution(amount=5, contribution_currency="USD"),
     R.CURRENCY_MISMATCH),
    ("brand outside the pool", world, contribution(brand="b9"), R.BRAND_NOT_IN_POOL),
    ("region outside the licence", world, contribution(region="DE"), R.REGION_NOT_IN_POOL),
    ("bet of zero", world, contribution(bet=0), R.INVALID_CONTRIBUTION),
    ("negative bet", world, contribution(bet=-5), R.INVALID_CONTRIBUTION),
    ("bet given as a bool", world, contribution(bet=True), R.INVALID_CONTRIBUTION),
    ("explicit contribution of zero", world, contribution(amount=0), R.INVALID_CONTRIBUTION),
    ("explicit contribution above the bet", world, contribution(bet=100, amount=101), R.INVALID_CONTRIBUTION),
    ("contribution without a round", world, contribution(round_id=""), R.INVALID_CONTRIBUTION),
    ("bet below the minimum", lambda: world(min_bet_minor=50), contribution(bet=49), R.BET_BELOW_MINIMUM),
    ("contribute to a closed pool", closed_world, contribution(), R.POOL_CLOSED),
    ("trigger a closed pool", closed_world, trigger(), R.POOL_CLOSED),
    ("contribution id reused for another bet", contributed_world, contribution(cid="c-dup", bet=2_000),
     R.IDEMPOTENCY_CONFLICT),
    ("contribution drawn with another seed", world, contribution(), R.SERVER_SEED_MISMATCH),
    ("trigger without an id", world, trigger(trigger_id=""), R.INVALID_TRIGGER),
    ("trigger id in the engine's namespace", world, trigger(trigger_id="auto-main-round-r1"), R.INVALID_TRIGGER),
    ("trigger without a player", world, trigger(player=""), R.INVALID_TRIGGER),
    ("trigger of an unknown tier", lambda: world("multi_tier"), trigger(tier="huge"), R.TIER_NOT_FOUND),
    ("multi_tier trigger naming no tier", lambda: world("multi_tier"), trigger(), R.TIER_NOT_FOUND),
    ("trigger a must_drop pool", lambda: world("must_drop"), trigger(), R.TRIGGER_NOT_ALLOWED),
    ("trigger a must-drop tier", lambda: world("multi_tier"), trigger(tier="grand"), R.TRIGGER_NOT_ALLOWED),
    ("trigger a timed pool", lambda: world("timed"), trigger(), R.TRIGGER_NOT_ALLOWED),
    ("trigger from a brand outside the pool", world, trigger(brand="b9"), R.BRAND_NOT_IN_POOL),
    ("trigger from another region", world, trigger(region="DE"), R.REGION_NOT_IN_POOL),
    ("trigger id of an unpaid win", trigger_pruned_world, trigger(trigger_id="t1"), R.TRIGGER_EXISTS),
    ("trigger an empty pool", lambda: world(seed_minor=0), trigger(), R.POOL_EMPTY),
    ("trigger drawn with another seed", world, trigger(), R.SERVER_SEED_MISMATCH),
    ("credit for no win", world, PayoutCredited("t404", 1_000), R.PAYOUT_NOT_FOUND),
    ("failure for no win", world, PayoutFailed("t404", 1, "aml_hold"), R.PAYOUT_NOT_FOUND),
    ("retry of no win", world, RetryPayout("t404"), R.PAYOUT_NOT_FOUND),
    ("credit of another amount", requested_world, PayoutCredited("t1", 999), R.AMOUNT_MISMATCH),
    ("failure after the credit", credited_world, PayoutFailed("t1", 1, "aml_hold"), R.PAYOUT_ALREADY_CREDITED),
    ("retry after the credit", credited_world, RetryPayout("t1"), R.PAYOUT_ALREADY_CREDITED),
    ("retry of a payout still waiting", requested_world, RetryPayout("t1"), R.PAYOUT_NOT_FAILED),
    ("failure for a future attempt", requested_world, PayoutFailed("t1", 2, "aml_hold"), R.STALE_PAYOUT_MESSAGE),
    ("reconfigure an unknown tier", world, Reconfigure(tiers=(TierPatch("grand", cap_minor=5),)), R.TIER_NOT_FOUND),
    ("reconfigure the cap below the seed", world, Reconfigure(tiers=(TierPatch("main", cap_minor=10),)),
     R.INVALID_CONFIG),
    ("reconfigure an unknown status", world, Reconfigure(status="paused"), R.INVALID_CONFIG),
    ("reconfigure multi_tier shares off 10000", lambda: world("multi_tier"),
     Reconfigure(tiers=(TierPatch("mini", share_bps=5_000),)), R.INVALID_CONFIG),
    ("reconfigure must_drop cap below the drop range", lambda: world("must_drop"),
     Reconfigure(tiers=(TierPatch("main", cap_minor=5_500),)), R.INVALID_CONFIG),
    ("reconfigure a deadline on a progressive pool", world, Reconfigure(deadline_ms=T0), R.INVALID_CONFIG),
    ("reconfigure with a seed that is not the new commitment", world,
     Reconfigure(server_seed_hash=hashlib.sha256(b"next").hexdigest()), R.SERVER_SEED_MISMATCH),
]

SEED_FOR = {"contribution drawn with another seed": OTHER_SEED, "trigger drawn with another seed": OTHER_SEED}


@pytest.mark.parametrize("name,make_world,command,code", REJECTIONS, ids=[r[0] for r in REJECTIONS])
def test_rejections_change_nothing(name, make_world, command, code):
    w = make_world()
    state = w.state
    key = "admin-new" if isinstance(command, (Reconfigure, RetryPayout)) else ""
    decision = decide(state, command, w.ctx(SEED_FOR.get(name, SEED), key))
    assert decision.outcome.code is code, decision.outcome.body
    assert decision.outcome.body["error"]["code"] == str(code)
    assert (decision.events, decision.postings, decision.audit, decision.payouts) == ((), (), (), ())
    assert evolve(state, decision.events) is state


def test_every_result_code_is_exercised():
    # OPERATION_ALREADY_APPLIED is the agent's to give (it knows the ledger): already_applied().
    seen = {code for *_, code in REJECTIONS} | {R.CREATED, R.OK, already_applied().outcome.code}
    assert seen == set(JackpotResult)
    assert already_applied().events == () and already_applied().postings == ()


def test_create_with_the_wrong_seed_is_refused_after_validation():
    w = World()
    assert decide(w.state, create(), w.ctx(OTHER_SEED)).outcome.code is R.SERVER_SEED_MISMATCH
    assert decide(w.state, create(seed_minor=-1), w.ctx(OTHER_SEED)).outcome.code is R.INVALID_CONFIG


def test_a_create_for_another_pool_is_a_wiring_bug():
    with pytest.raises(InvariantViolation):
        decide(PoolState.empty("dev", "pool2"), create(), World().ctx())


def test_unknown_command_is_a_bug():
    with pytest.raises(InvariantViolation):
        decide(world().state, object(), World().ctx())  # type: ignore[arg-type]


# ---------------------------------------------------------------- fixed

def test_fixed_pool_keeps_its_prize_and_books_contributions_to_the_reserve():
    w = World()
    d = w.do(create("fixed"))
    assert legs(d) == [("jp:pool1:seed:main:0", 0, SEED_FUND, LIABILITY, 5_000, "jp_seed")]
    d = w.contribute(bet=1_000)  # 1% of 1000
    assert d.outcome.body["amount"] == 10 and d.outcome.body["tiers"] == {"main": 0}
    assert legs(d)[0][2:] == (FROM_B1, RESERVE, 10, "jp_contribution_reserve")
    assert (w.tier().size_minor, w.tier().reserve_minor) == (5_000, 10)


def test_fixed_pool_pays_the_prize_and_reseeds_from_the_reserve_first():
    w = world("fixed")
    for _ in range(3):
        w.contribute(bet=10_000)  # 100 each to the reserve
    d = w.do(Trigger("t1", "p7", "r9", "b1", "MT", reason="symbols"))
    assert d.outcome.code is R.CREATED
    assert d.outcome.body["amount"] == 5_000 and d.outcome.body["payout_key"] == "jp_p_pool1_t1"
    assert legs(d) == [
        ("jp:pool1:drop:t1", 0, LIABILITY, PAYOUTS, 5_000, "jp_payout"),
        ("jp:pool1:seed:main:1", 0, RESERVE, LIABILITY, 300, "jp_seed_reserve"),
        ("jp:pool1:seed:main:1", 1, SEED_FUND, LIABILITY, 4_700, "jp_seed"),
    ]
    (request,) = d.payouts
    assert request.to_message() == {
        "tenant_id": "dev", "pool_id": "pool1", "tier": "main", "trigger_id": "t1",
        "idempotency_key": "jp_p_pool1_t1", "player_id": "p7", "round_id": "r9", "brand_id": "b1", "region": "MT",
        "amount": 5_000, "currency": "EUR", "attempt": 1, "reason": "manual:symbols", "requested_at_ms": w.now,
    }
    assert (w.tier().size_minor, w.tier().reserve_minor, w.tier().cycle) == (5_000, 0, 1)
    assert conservation(w.state).payouts_minor == 5_000


# ---------------------------------------------------------------- progressive

def test_progressive_pool_grows_up_to_its_cap_then_fills_the_reserve():
    w = world()  # seed 1000, cap 1500, 5%
    d = w.contribute(bet=4_000)
    assert (d.outcome.body["amount"], w.tier().size_minor) == (200, 1_200)
    assert legs(d) == [("jp:pool1:contribution:" + d.outcome.body["contribution_id"], 0, FROM_B1, LIABILITY, 200,
                        "jp_contribution")]
    d = w.contribute(bet=8_000)  # 400: 300 fits, 100 over the cap
    assert (d.outcome.body["tiers"], d.outcome.body["reserve"]) == ({"main": 300}, 100)
    assert [leg[4:] for leg in legs(d)] == [(300, "jp_contribution"), (100, "jp_contribution_reserve")]
    assert (w.tier().size_minor, w.tier().reserve_minor) == (1_500, 100)


def test_contribution_is_rounded_down_or_taken_as_sent():
    w = world()
    assert w.contribute(bet=39).outcome.body["amount"] == 1  # 39 * 500 // 10000
    assert w.contribute(bet=19).outcome.body["amount"] == 0
    d = w.contribute(bet=1_000, amount=7)
    assert d.outcome.body["amount"] == 7 and legs(d)[0][4] == 7


def test_progressive_drop_pays_the_size_and_a_large_reserve_keeps_the_rest():
    w = world(cap_minor=1_100)
    w.contribute(bet=100_000)  # 5000: 100 to the pool, 4900 to the reserve
    d = w.do(Trigger("t1", "p1", "r1", "b1", "MT"))
    assert d.outcome.body["amount"] == 1_100
    assert (w.tier().size_minor, w.tier().reserve_minor) == (1_000, 3_900)
    assert conservation(w.state) == Conservation(5_000, 1_000, 4_900, 1_100)


def test_lowering_the_cap_moves_the_excess_to_the_reserve_and_is_audited():
    w = world(cap_minor=None)
    w.contribute(bet=20_000)  # size 2000
    d = w.do(Reconfigure(tiers=(TierPatch("main", cap_minor=1_200),), reason="limit review"))
    assert d.outcome.code is R.OK
    seq = w.kinds("config_changed")[-1].seq
    assert legs(d) == [(f"jp:pool1:config:{seq}", 0, LIABILITY, RESERVE, 800, "jp_cap_reserve")]
    entry = w.kinds("config_changed")[-1]
    assert entry.payload["before"]["tiers"][0]["cap"] is None and entry.payload["after"]["tiers"][0]["cap"] == 1_200
    assert entry.payload["reason"] == "limit review"
    assert (w.tier().size_minor, w.tier().reserve_minor) == (1_200, 800)


def test_a_reconfigure_that_changes_nothing_writes_nothing():
    w = world()
    version, head = w.state.version, w.state.chain_seq
    d = w.do(Reconfigure(contribution_bps=500), key="")
    assert d.outcome.code is R.OK and d.events == () and d.audit == ()
    assert (w.state.version, w.state.chain_seq) == (version, head)


def test_seed_changes_apply_at_the_next_seeding():
    w = world()
    w.do(Reconfigure(tiers=(TierPatch("main", seed_minor=1_400),)))
    assert w.tier().size_minor == 1_000
    w.do(Trigger("t1", "p1", "r1", "b1", "MT"))
    assert w.tier().size_minor == 1_400


def test_rotating_the_server_seed_commits_the_new_one():
    w = world()
    new_seed = b"the-next-seed"
    new_hash = hashlib.sha256(new_seed).hexdigest()
    assert w.code(Reconfigure(server_seed_hash=new_hash), seed=new_seed) is R.OK
    assert w.kinds("seed_commitment")[-1].payload["server_seed_hash"] == new_hash
    assert decide(w.state, contribution(), w.ctx(SEED)).outcome.code is R.SERVER_SEED_MISMATCH
    assert decide(w.state, contribution(), w.ctx(new_seed)).outcome.code is R.OK


def test_closing_and_reopening_a_pool():
    w = closed_world()
    assert pool_view(w.state)["status"] == "closed"
    assert w.code(Reconfigure(status="open")) is R.OK
    assert w.contribute().outcome.code is R.OK


# ---------------------------------------------------------------- multi-tier

def test_split_gives_the_rounding_remainder_to_the_first_tier():
    tiers = create("multi_tier").tiers  # 60% / 30% / 10%
    assert split_contribution(1_001, tiers) == {"mini": 601, "major": 300, "grand": 100}
    assert split_contribution(9, tiers) == {"mini": 7, "major": 2, "grand": 0}  # 5 + 2 + 0, 2 left over
    assert split_contribution(0, tiers) == {"mini": 0, "major": 0, "grand": 0}


def test_multi_tier_pool_splits_contributions_into_accounts_per_tier():
    w = World()
    d = w.do(create("multi_tier"))
    assert [leg[2:5] for leg in legs(d)] == [
        (SEED_FUND, "system:JACKPOT_LIABILITY:pool1:mini:EUR", 100),
        (SEED_FUND, "system:JACKPOT_LIABILITY:pool1:major:EUR", 1_000),
        (SEED_FUND, "system:JACKPOT_LIABILITY:pool1:grand:EUR", 10_000),
    ]
    # Find a round that wins no tier by chance, so the split is all we see.
    round_id = next(f"q{i}" for i in range(100)
                    if not any(round_wins(SEED, "pool1", f"q{i}", t, o) for t, o in
                               (("mini", 300_000_000), ("major", 20_000_000))))
    d = w.contribute(bet=10_010, round_id=round_id)  # 1001
    assert d.outcome.body["tiers"] == {"mini": 200, "major": 300, "grand": 100}
    assert d.outcome.body["reserve"] == 401  # mini is capped at 300
    assert [(leg[3].split(":")[3:], leg[4]) for leg in legs(d)] == [
        (["mini", "EUR"], 200), (["mini", "reserve", "EUR"], 401), (["major", "EUR"], 300), (["grand", "EUR"], 100)]


def test_multi_tier_tiers_win_by_their_own_odds_in_the_seeded_draw():
    w = world("multi_tier")
    wins = {"mini": 0, "major": 0}
    for i in range(300):
        round_id = f"round-{i}"
        expected = {t for t, odds in (("mini", 300_000_000), ("major", 20_000_000))
                    if round_wins(SEED, "pool1", round_id, t, odds)}
        d = w.contribute(bet=100, round_id=round_id)
        got = {x["tier"] for x in d.outcome.body["wins"]}
        assert got == expected, round_id
        for x in d.outcome.body["wins"]:
            assert x["trigger_id"] == f"auto-{x['tier']}-round-{round_id}"
            wins[x["tier"]] += 1
    assert wins["mini"] > wins["major"] > 0
    assert all(w_.reason == "probabilistic" for w_ in w.state.wins.values())


def test_a_round_draws_once_per_tier_even_when_it_contributes_twice():
    w = world(odds_ppb=10**9)  # every round wins
    first = w.contribute(round_id="same")
    second = w.contribute(round_id="same")
    assert len(first.outcome.body["wins"]) == 1 and second.outcome.body["wins"] == []


def test_the_draw_does_not_depend_on_the_player():
    winning = next(f"round-{i}" for i in range(100) if round_wins(SEED, "pool1", f"round-{i}", "mini", 300_000_000))
    losing = next(f"round-{i}" for i in range(100) if not round_wins(SEED, "pool1", f"round-{i}", "mini", 300_000_000))
    for round_id, won in ((winning, True), (losing, False)):
        for player in ("alice", "bob", "carol"):
            d = world("multi_tier").contribute(round_id=round_id, player=player)
            assert ("mini" in {x["tier"] for x in d.outcome.body["wins"]}) is won


def test_multi_tier_grand_is_a_must_drop_tier_inside_its_range():
    w = world("multi_tier", contribution_bps=10_000)
    for i in range(100):
        d = w.contribute(bet=1_000, round_id=f"g{i}")  # 100 a time to the grand tier
        grand = [x for x in d.outcome.body["wins"] if x["tier"] == "grand"]
        if grand:
            assert 12_000 <= grand[0]["amount"] <= 15_000
            assert grand[0]["trigger_id"] == "auto-grand-drop-0"
            break
    else:
        pytest.fail("the grand tier never dropped")


# ---------------------------------------------------------------- must-drop

def test_must_drop_pool_drops_exactly_at_its_hidden_point_and_reveals_it():
    w = world("must_drop")
    commitment = w.tier().drop_commitment
    assert pool_view(w.state)["tiers"][0]["drop_commitment"] == commitment
    published = w.kinds("drop_commitment")[-1].payload
    assert published["commitment"] == commitment and (published["drop_min_minor"], published["drop_max_minor"]) == (
        5_000, 6_000)
    point = w.tier().drop_point_minor
    while True:
        d = w.contribute(bet=3_337)  # 333 or 334 at a time
        if d.outcome.body["wins"]:
            break
    (win,) = d.outcome.body["wins"]
    assert win["amount"] == point and 5_000 <= point <= 6_000
    assert win["trigger_id"] == "auto-main-drop-0"
    reveal = w.kinds("drop_reveal")[-1].payload
    assert (reveal["point_minor"], reveal["commitment"]) == (point, commitment)
    assert verify_reveal(commitment, reveal["point_minor"], reveal["nonce"])
    assert not verify_reveal(commitment, point + 1, reveal["nonce"])
    # The overshoot went to the reserve and funded part of the new seed.
    assert w.tier().size_minor == 1_000 and w.tier().cycle == 1
    assert w.tier().drop_commitment != commitment and w.kinds("drop_commitment")[-1].payload["cycle"] == 1


def test_changing_the_drop_range_never_moves_the_committed_point():
    w = world("must_drop")
    point = w.tier().drop_point_minor
    w.do(Reconfigure(tiers=(TierPatch("main", drop_min_minor=7_000, drop_max_minor=8_000),)))
    assert w.tier().drop_point_minor == point
    while not w.contribute(bet=5_000).outcome.body["wins"]:
        pass
    assert 7_000 <= w.tier().drop_point_minor <= 8_000


def test_cap_cannot_go_below_a_committed_point():
    w = world("must_drop", cap_minor=6_000)
    point = w.tier().drop_point_minor
    d = decide(w.state, Reconfigure(tiers=(TierPatch("main", cap_minor=point - 1, drop_max_minor=point - 1),)),
               w.ctx(key="k"))
    assert d.outcome.code is R.INVALID_CONFIG


# ---------------------------------------------------------------- timed

def test_timed_pool_drops_at_its_deadline_to_a_seeded_draw_among_the_period_entries():
    w = world("timed")  # deadline T0 + 60 s, every 60 s
    entries = {"ann": 0, "bob": 0, "cid": 0}
    for i, player in enumerate(["bob", "ann", "bob", "cid", "bob"]):
        w.contribute(bet=10_000, player=player, round_id=f"t{i}")
        entries[player] += 1
    assert w.state.participants["bob"].entries == 3
    before = w.do(Tick("early"))
    assert before.events == () and before.outcome.body["dropped"] == []
    size = w.tier().size_minor
    w.now = T0 + 60_000 - 1_000
    d = w.do(Tick("deadline"))
    index = deadline_winner_index(SEED, "pool1", "main", T0 + 60_000, 5)
    order = [p for p in sorted(entries) for _ in range(entries[p])]
    (win,) = d.outcome.body["dropped"]
    assert win["amount"] == size and win["trigger_id"] == f"auto-main-deadline-{T0 + 60_000}"
    assert w.state.wins[win["trigger_id"]].player_id == order[index]
    assert w.state.participants == {} and w.state.deadline_ms == T0 + 120_000
    assert w.tier().size_minor == 1_000


def test_a_round_after_the_deadline_drops_the_closed_period_first_and_enters_the_next():
    w = world("timed")  # deadline T0 + 60 s
    w.contribute(bet=10_000, player="ann", round_id="in-time")
    size = w.tier().size_minor
    w.now = T0 + 90_000  # the deadline's tick has not come yet
    d = w.contribute(bet=10_000, player="zed", round_id="late", cid="late")
    (win,) = d.outcome.body["wins"]
    assert (win["amount"], w.state.wins[win["trigger_id"]].player_id) == (size, "ann")
    assert w.state.deadline_ms == T0 + 120_000
    assert list(w.state.participants) == ["zed"] and w.tier().size_minor == 1_000 + 100
    assert w.do(Tick("the late tick")).outcome.body["dropped"] == []  # nothing twice


def test_timed_pool_without_participants_rolls_over_to_the_next_deadline():
    w = world("timed")
    w.now = T0 + 200_000  # three deadlines late
    d = w.do(Tick("late"))
    assert d.outcome.body["dropped"] == []
    assert w.state.deadline_ms == T0 + 240_000
    rollover = w.kinds("deadline_rollover")[-1].payload
    assert (rollover["deadline_ms"], rollover["next_deadline_ms"]) == (T0 + 60_000, T0 + 240_000)


def test_timed_deadline_tick_is_a_replay_when_redelivered():
    w = world("timed")
    w.contribute()
    w.now = T0 + 60_000
    first = w.do(Tick("tick-1"))
    again = w.do(Tick("tick-1"))
    assert again.replayed and again.payouts == first.payouts and again.postings == first.postings
    assert again.audit == first.audit


def test_closed_timed_pool_does_not_drop():
    w = world("timed")
    w.contribute()
    w.do(Reconfigure(status="closed"))
    w.now = T0 + 100_000
    assert w.do(Tick()).outcome.body["dropped"] == []


def test_moving_a_timed_deadline():
    w = world("timed")
    w.do(Reconfigure(deadline_ms=T0 + 3_600_000))
    assert w.state.deadline_ms == T0 + 3_600_000


# ---------------------------------------------------------------- local and network pools

def test_network_pool_takes_its_brands_and_books_each_brand_separately():
    w = world(brand_ids=("b1", "b2", "b3"), cap_minor=None)
    assert pool_view(w.state)["network"] is True
    w.contribute(brand="b1", bet=1_000)
    w.contribute(brand="b2", bet=3_000)
    assert w.contribute(brand="b4").outcome.code is R.BRAND_NOT_IN_POOL
    assert w.contribute(brand="b2", region="DE").outcome.code is R.REGION_NOT_IN_POOL
    by_account = {p.debit_account: p.amount_minor for p in w.ledger.values() if p.category == "jp_contribution"}
    assert by_account == {FROM_B1: 50, "system:JACKPOT_CONTRIBUTIONS:b2:EUR": 150}


def test_local_pool_is_not_a_network_pool():
    assert pool_view(world().state)["network"] is False


def test_check_candidate_reports_eligibility_odds_and_rules_and_changes_nothing():
    w = world("multi_tier")
    d = w.do(CheckCandidate("b1", "MT", "EUR", 100, "p1"))
    body = d.outcome.body
    assert d.events == () and body["eligible"] is True and body["reason"] is None
    assert body["odds"] == {"mini": "0.3", "major": "0.02", "grand": "0"}
    assert body["rules"]["must_drop"] == {"grand": [12_000, 15_000]}
    for command, reason in [(CheckCandidate("b9", "MT", "EUR"), "brand_not_in_pool"),
                            (CheckCandidate("b1", "DE", "EUR"), "region_not_in_pool"),
                            (CheckCandidate("b1", "MT", "USD"), "currency_mismatch")]:
        assert w.do(command).outcome.body["eligible"] is False
        assert w.do(command).outcome.body["reason"] == reason


# ---------------------------------------------------------------- idempotency

def test_a_replayed_winning_contribution_re_emits_postings_payouts_and_chain_entries():
    w = world(odds_ppb=10**9)
    command = contribution(cid="c-win", bet=2_000)
    first = w.do(command)
    assert first.payouts and first.audit
    state = w.state
    again = decide(state, command, w.ctx())
    assert again.replayed and again.events == ()
    assert (again.outcome, again.postings, again.payouts, again.audit) == (
        first.outcome, first.postings, first.payouts, first.audit)


def test_a_rejected_contribution_is_decided_again_on_retry():
    w = world()
    command = contribution(region="DE", cid="c-retry")
    assert w.code(command) is R.REGION_NOT_IN_POOL
    assert "contribution:c-retry" not in w.state.operations


def test_create_replays_while_its_record_is_kept():
    w = world()
    assert w.do(create()).replayed


def test_operation_ids_are_pruned_after_retention():
    w = world()
    w.contribute(cid="old")
    w.contribute(cid="new", advance_ms=HOUR_MS, retention_ms=HOUR_MS)
    assert "contribution:old" in w.state.operations  # exactly one hour old: kept
    w.contribute(cid="x", advance_ms=1, retention_ms=HOUR_MS)
    assert "contribution:old" not in w.state.operations and "contribution:new" in w.state.operations


def test_a_credited_win_leaves_the_record_after_its_own_short_retention():
    w = credited_world()
    w.contribute(advance_ms=RULES.closed_win_retention_ms - 1_000)
    assert w.state.wins["t1"].state == CREDITED  # a late answer still finds it
    w.contribute(advance_ms=2_000)
    assert "t1" not in w.state.wins and "trigger:t1" in w.state.operations
    assert w.code(Trigger("t1", "p1", "r1", "b1", "MT")) is R.CREATED  # the trigger id is still a replay


# ---------------------------------------------------------------- invariants

def test_conservation_holds_from_the_record_and_from_the_ledger():
    w = world("multi_tier")
    for i in range(200):
        w.contribute(bet=500 + i)
    figures, _ = ledger_conservation(w.ledger.values(), w.state.config)
    assert figures == conservation(w.state) and figures.balanced
    assert figures.payouts_minor > 0


def test_a_ledger_that_lost_a_leg_is_caught():
    w = world()
    d = w.contribute(bet=4_000)
    lost = [p for p in w.ledger.values() if p != d.postings[0]]
    with pytest.raises(InvariantViolation):
        check_ledger(w.state, lost)


def test_money_leaving_the_pool_anywhere_but_payouts_is_caught():
    w = world()
    stray = Posting("dev", "x", 0, LIABILITY, "system:ADJUSTMENTS:EUR", 1, "EUR", "oops", T0)
    with pytest.raises(InvariantViolation):
        ledger_conservation([*w.ledger.values(), stray], w.state.config)


@pytest.mark.parametrize("breakage", ["negative size", "above cap", "totals off", "reached point", "bad commitment"])
def test_broken_records_are_invariant_violations(breakage):
    import dataclasses
    w = world("must_drop", cap_minor=7_000)
    tier = w.tier()
    broken = {
        "negative size": lambda s: dataclasses.replace(s, tiers={"main": dataclasses.replace(tier, size_minor=-1)}),
        "above cap": lambda s: dataclasses.replace(s, tiers={"main": dataclasses.replace(tier, size_minor=7_001)}),
        "totals off": lambda s: dataclasses.replace(s, totals=Totals(1, s.totals.seeds_minor, 0)),
        "reached point": lambda s: dataclasses.replace(s, tiers={"main": dataclasses.replace(
            tier, size_minor=tier.drop_point_minor)}),
        "bad commitment": lambda s: dataclasses.replace(s, tiers={"main": dataclasses.replace(
            tier, drop_point_minor=tier.drop_point_minor + 1)}),
    }[breakage](w.state)
    with pytest.raises(InvariantViolation):
        check_pool(broken)
    check_pool(w.state)
    check_conservation(w.state)


def test_pool_view_publishes_sizes_and_hides_the_drop_point():
    w = world("must_drop")
    view = pool_view(w.state)
    assert view["size"] == 1_000 and view["tiers"][0]["drop_range"] == [5_000, 6_000]
    assert view["chain_head"] == {"seq": w.state.chain_seq, "hash": w.state.chain_hash}
    flat = repr(view)
    assert w.tier().drop_nonce not in flat and "drop_point" not in flat


def test_last_winner_is_masked_in_the_view():
    w = world()
    w.do(Trigger("t1", "player-12345", "r1", "b1", "MT"))
    assert pool_view(w.state)["tiers"][0]["last_winner"] == {"player": "pl***", "amount": 1_000, "at_ms": w.now}


def test_chain_entries_travel_as_audit_records():
    w = world()
    (record, *_) = w.do(Trigger("t1", "p1", "r1", "b1", "MT")).audit
    assert record.kind == "jp_chain" and record.code == "drop" and record.player_id == ""
    assert record.audit_id == f"jp:pool1:chain:{record.detail['seq']}"
    assert chain_entry_from_audit(record).payload["trigger_id"] == "t1"


def test_pool_ids_have_no_underscore_so_payout_keys_name_one_win():
    config = world().state.config
    assert validate_config(dataclasses.replace(config, pool_id="a-b.c")) == ""
    # Otherwise pool a_b with trigger c and pool a with trigger b_c would share jp_p_a_b_c.
    assert "pool_id" in validate_config(dataclasses.replace(config, pool_id="a_b"))
