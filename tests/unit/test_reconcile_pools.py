"""Reconciliation of jackpot pools, the pure part: pool records and ledgers made by the
real pool core (decide/evolve, via the scenario World), compared with compare_pools.

The ledger of each test is what the core's postings add up to, so an agreeing case also
proves that the reconciliation reads the accounts the core actually posts to."""
from __future__ import annotations

import dataclasses
import json

from app.domain.jackpot.core import Conservation, pool_view
from app.domain.jackpot.state import OperationRecord, PoolState, Totals
from app.domain.ledger import account_deltas
from app.reconcile import (
    CACHED, EXIT_DRIFT, EXIT_OK, NOT_A_RECORD_ACCOUNT, NOT_CACHED, POOL_OPERATION_MARK, RESERVE, SIZE, PoolAmount,
    PoolReport, PoolRow, PoolSnapshot, Report, UnbalancedPool, apply_pool_changelog, compare,
    compare_pools, confirm, parse_pool_account, parse_pool_snapshot, pool_record, render,
)
from tables.pools import encode_operation, encode_state
from tests.unit.test_jackpot_scenarios import LIABILITY, RESERVE as RESERVE_ACCOUNT, World, create

T = "dev"  # the World's tenant
KEY = (T, "pool1")


def progressive() -> World:
    """pool1, progressive: seed 1 000, cap 1 500, 5 % of each bet. Six bets of 2 000 bring
    600 in: 500 fill the pool to its cap, 100 wait in the reserve."""
    w = World()
    w.do(create("progressive"))
    for _ in range(6):
        w.contribute(bet=2_000)
    assert (w.tier().size_minor, w.tier().reserve_minor) == (1_500, 100)
    return w


def ledger_of(w: World, **extra: int) -> dict[tuple[str, str], int]:
    """The tenant's ledger balances as the world's postings leave them, plus `extra`
    (account -> amount added to its balance)."""
    balances = account_deltas(w.ledger.values())
    for account, amount in extra.items():
        balances[account] = balances.get(account, 0) + amount
    return {(T, account): balance for account, balance in balances.items()}


def snapshot_of(state: PoolState) -> PoolSnapshot:
    """The snapshot the jackpot agent would cache for this record."""
    return parse_pool_snapshot(json.dumps(pool_view(state)))


def report_of(pools: PoolReport, volume: int) -> Report:
    return Report(compared=0, drifting=(), ledger_volume=volume, jackpot=pools)


def test_agreeing_ledger_record_and_snapshot_report_no_drift():
    w = progressive()
    pools = compare_pools(ledger_of(w), {KEY: pool_record(w.state)}, {KEY: snapshot_of(w.state)})
    assert pools == PoolReport(compared=2, pools=1)
    report = report_of(pools, volume=1_600)
    assert (report.total_drift, report.drift_milli_ppm, report.exit_code) == (0, 0, EXIT_OK)
    assert render(report) == (
        "OK: 0 of 0 player accounts drift (0 players, 0 not cached); "
        "0 of 2 pool accounts drift (1 pools, 0 not cached, 0 not conserving); "
        "total absolute drift 0 minor units = 0.000 ppm of ledger volume 1600")


def test_an_extra_ledger_leg_on_a_pool_is_drift_of_exactly_its_amount():
    w = progressive()
    pools = compare_pools(ledger_of(w, **{LIABILITY: 25}), {KEY: pool_record(w.state)}, {KEY: snapshot_of(w.state)})
    version = w.state.version
    assert pools.drifting == (
        PoolRow(T, "pool1", "main", SIZE, LIABILITY, ledger=1_525, table=1_500, table_version=version,
                cache=1_500, cache_state=CACHED, cache_version=version),
    )
    [row] = pools.drifting
    assert (row.table_drift, row.cache_drift, row.drift) == (-25, 0, 25)
    report = report_of(pools, volume=1_625)
    assert (report.total_drift, report.exit_code) == (25, EXIT_DRIFT)
    assert report.drift_milli_ppm == 15_384_615  # 25 / 1 625 = 15 384.615 ppm
    lines = render(report).splitlines()
    assert lines[0].split() == ["tenant", "pool", "tier", "part", "ledger", "table", "table-ledger", "cache",
                                "cache-table", "versions"]
    assert lines[1].split() == [T, "pool1", "main", "size", "1525", "1500", "-25", "1500", "+0",
                                "table", str(version), "/", "cache", str(version)]
    assert lines[-1].startswith("DRIFT: 0 of 0 player accounts drift (0 players, 0 not cached); "
                                "1 of 2 pool accounts drift (1 pools, 0 not cached, 0 not conserving); "
                                "total absolute drift 25 minor units = 15384.615 ppm")


def test_a_reserve_is_compared_on_its_own_account():
    w = progressive()
    pools = compare_pools(ledger_of(w, **{RESERVE_ACCOUNT: -100}), {KEY: pool_record(w.state)},
                          {KEY: snapshot_of(w.state)})
    [row] = pools.drifting
    assert (row.account, row.tier, row.part, row.ledger, row.table, row.table_drift) == (
        RESERVE_ACCOUNT, "main", RESERVE, 0, 100, 100)


def test_a_snapshot_disagreeing_with_the_record_is_drift():
    w = progressive()
    tampered = pool_view(w.state)
    tampered["tiers"][0]["size"] += 40
    tampered["version"] += 5
    pools = compare_pools(ledger_of(w), {KEY: pool_record(w.state)}, {KEY: parse_pool_snapshot(json.dumps(tampered))})
    [row] = pools.drifting
    assert (row.part, row.table_drift, row.cache, row.cache_drift, row.drift) == (SIZE, 0, 1_540, 40, 40)
    assert f"table {w.state.version} / cache {w.state.version + 5}" in render(report_of(pools, 1_600))


def test_a_missing_snapshot_is_not_cached_not_drift():
    w = progressive()
    pools = compare_pools(ledger_of(w), {KEY: pool_record(w.state)}, {KEY: None})
    assert (pools.drifting, pools.pools_not_cached, pools.total_drift) == ((), 1, 0)
    assert "(1 pools, 1 not cached, 0 not conserving)" in render(report_of(pools, 1_600))
    # Drift between ledger and record is still found, with no cache value beside it.
    [row] = compare_pools(ledger_of(w, **{LIABILITY: 3}), {KEY: pool_record(w.state)}, {}).drifting
    assert (row.cache, row.cache_state, row.cache_version, row.drift) == (None, NOT_CACHED, None, 3)
    assert "not cached" in render(report_of(PoolReport(2, (row,), pools=1, pools_not_cached=1), 1_603))


def test_a_record_that_does_not_conserve_money_is_reported():
    w = progressive()
    # The record claims 7 more contributions than its tiers and payouts hold.
    totals = dataclasses.replace(w.state.totals, contributions_minor=w.state.totals.contributions_minor + 7)
    broken = dataclasses.replace(w.state, totals=totals)
    pools = compare_pools(ledger_of(w), {KEY: pool_record(broken)}, {KEY: snapshot_of(w.state)})
    assert pools.drifting == ()
    [pool] = pools.unbalanced
    assert pool == UnbalancedPool(T, "pool1", w.state.version, Conservation(607, 1_000, 1_600, 0))
    assert (pool.imbalance, pool.drift, pools.total_drift) == (7, 7, 7)
    report = report_of(pools, 1_600)
    assert report.exit_code == EXIT_DRIFT
    text = render(report)
    assert (f"tenant {T} pool pool1 (table {w.state.version}) does not conserve money: contributions 607 + "
            "seeds 1000 != sizes and reserves 1600 + payouts 0 (+7)") in text
    assert "(1 pools, 0 not cached, 1 not conserving); total absolute drift 7 minor units" in text


def test_multi_tier_pools_name_the_tier_in_their_accounts():
    w = World()
    w.do(create("multi_tier"))  # mini (cap 300), major, grand; 10 % of each bet, split 60/30/10
    for round_id in ("r-a", "r-b", "r-c"):
        w.contribute(bet=1_000, round_id=round_id)
    record = pool_record(w.state)
    assert set(record.amounts) == {
        f"system:JACKPOT_LIABILITY:pool1:{tier}{suffix}:EUR"
        for tier in ("mini", "major", "grand") for suffix in ("", ":reserve")}
    assert record.amounts["system:JACKPOT_LIABILITY:pool1:grand:reserve:EUR"] == PoolAmount(
        "grand", RESERVE, w.state.tiers["grand"].reserve_minor)
    pools = compare_pools(ledger_of(w), {KEY: record}, {KEY: snapshot_of(w.state)})
    assert pools == PoolReport(compared=6, pools=1)

    mini = "system:JACKPOT_LIABILITY:pool1:mini:EUR"
    [row] = compare_pools(ledger_of(w, **{mini: -1}), {KEY: record}, {KEY: snapshot_of(w.state)}).drifting
    assert (row.tier, row.part, row.account, row.table_drift) == ("mini", SIZE, mini, 1)


def test_single_tier_pools_do_not_name_the_tier_and_a_wrongly_named_account_is_drift():
    w = progressive()
    assert set(pool_record(w.state).amounts) == {LIABILITY, RESERVE_ACCOUNT}
    # Money posted as if the pool were multi_tier lands on an account its record does not
    # hold: the ledger holds it there, and misses it on the right account.
    misnamed = "system:JACKPOT_LIABILITY:pool1:main:EUR"
    ledger = ledger_of(w, **{LIABILITY: -30, misnamed: 30})
    pools = compare_pools(ledger, {KEY: pool_record(w.state)}, {KEY: snapshot_of(w.state)})
    assert [(r.account, r.tier, r.ledger, r.table, r.cache_state) for r in pools.drifting] == [
        (LIABILITY, "main", 1_470, 1_500, CACHED),
        (misnamed, "main", 30, 0, NOT_A_RECORD_ACCOUNT),
    ]
    assert pools.total_drift == 60 and pools.compared == 3


def test_a_pool_only_the_ledger_knows_drifts_by_its_balances():
    w = progressive()
    ledger = ledger_of(w)
    pools = compare_pools(ledger, {}, {KEY: snapshot_of(w.state)})
    assert [(r.account, r.ledger, r.table, r.table_version, r.cache, r.drift) for r in pools.drifting] == [
        (LIABILITY, 1_500, 0, None, 1_500, 3_000),
        (RESERVE_ACCOUNT, 100, 0, None, 100, 200),
    ]
    assert pools.pools == 1 and pools.unbalanced == ()


def test_pool_accounts_are_told_apart_from_every_other_account():
    assert parse_pool_account(LIABILITY) == ("pool1", None, SIZE)
    assert parse_pool_account(RESERVE_ACCOUNT) == ("pool1", None, RESERVE)
    assert parse_pool_account("system:JACKPOT_LIABILITY:pool1:mini:EUR") == ("pool1", "mini", SIZE)
    assert parse_pool_account("system:JACKPOT_LIABILITY:pool1:mini:reserve:EUR") == ("pool1", "mini", RESERVE)
    for other in ("system:JACKPOT_CONTRIBUTIONS:b1:EUR", "system:ADJUSTMENTS:jackpot_seed:EUR",
                  "player:p1:CASH:EUR", "system:JACKPOT_LIABILITY:EUR", "system:JACKPOT_LIABILITY:a:b:c:EUR"):
        assert parse_pool_account(other) is None, other
    # Players and pools do not see each other's accounts.
    w = progressive()
    assert compare(ledger_of(w), {}, {}, 1_600).compared == 0


def test_confirm_keeps_only_pool_drift_seen_in_both_passes():
    w = progressive()
    record, snapshot = pool_record(w.state), snapshot_of(w.state)
    first = report_of(compare_pools(ledger_of(w, **{LIABILITY: 1}), {KEY: record}, {KEY: snapshot}), 1_601)
    broken = dataclasses.replace(w.state, totals=Totals(600, 1_000, 1))
    second = report_of(compare_pools(ledger_of(w, **{LIABILITY: 2, RESERVE_ACCOUNT: 5}),
                                     {KEY: pool_record(broken)}, {KEY: snapshot}), 1_607)
    confirmed = confirm(first, second)
    assert [(row.account, row.ledger) for row in confirmed.jackpot.drifting] == [(LIABILITY, 1_502)]
    assert confirmed.jackpot.unbalanced == ()
    assert confirmed.notes == (
        "1 pool account(s) drifted in one pass only (in flight during the run), not reported",
        "1 pool record(s) did not conserve money in one pass only, not reported",
    )
    assert confirmed.total_drift == 2 and confirmed.ledger_volume == 1_607
    clean = report_of(compare_pools(ledger_of(w), {KEY: record}, {KEY: snapshot}), 1_600)
    assert confirm(first, clean).exit_code == EXIT_OK


def test_the_pools_changelog_folds_into_the_latest_pool_record_and_skips_operations():
    w = progressive()
    records: dict = {}
    apply_pool_changelog(records, b"dev|pool1", encode_state(w.state))
    operation = encode_operation(w.state.version, OperationRecord("hash", "OK", {}, 0))
    apply_pool_changelog(records, b"dev|pool1" + POOL_OPERATION_MARK + b"contribution:c1", operation)
    apply_pool_changelog(records, b"dev|pool1|op|contribution:c2", b"")  # an operation's deletion
    assert records == {KEY: pool_record(w.state)}
    w.contribute(bet=2_000)
    apply_pool_changelog(records, b"dev|pool1", encode_state(w.state))
    assert records[KEY].version == w.state.version
    # A record without a configuration holds nothing to compare.
    apply_pool_changelog(records, b"dev|pool2", encode_state(PoolState.empty(T, "pool2")))
    assert set(records) == {KEY}
    apply_pool_changelog(records, b"dev|pool1", None)
    assert records == {}


def test_pool_names_match_the_agent():
    from agents.jackpot import OPERATION_MARK, is_pool_key

    assert POOL_OPERATION_MARK == OPERATION_MARK and not is_pool_key(b"t|p" + POOL_OPERATION_MARK + b"x")


def test_the_pool_snapshot_json_is_read_per_tier():
    w = World()
    w.do(create("multi_tier"))
    snapshot = snapshot_of(w.state)
    assert snapshot.version == w.state.version
    assert snapshot.amounts == {(name, part): getattr(tier, "size_minor" if part == SIZE else "reserve_minor")
                                for name, tier in w.state.tiers.items() for part in (SIZE, RESERVE)}
    assert snapshot.amounts[("grand", SIZE)] == 10_000
