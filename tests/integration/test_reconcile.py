"""Reconciliation: the pure comparison on plain data, then `python -m app.reconcile`
against the running stack (ledger and records in PostgreSQL, snapshots
in Redis), for player accounts and for jackpot pools made through the HTTP API. The pure
comparison of pools has its own tests in tests/unit/test_reconcile_pools.py."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import asyncpg
import msgpack
import pytest
import redis.asyncio as aioredis

from app.client.signed import BankrollClient
from app.domain.wallet.core import WalletState
from app.reconcile import (
    CACHED, EXIT_DRIFT, EXIT_ERROR, EXIT_OK, NOT_CACHED, NOT_IN_SNAPSHOT, POOL_AGENT, SIZE, WALLET_AGENT,
    AccountRow, PoolRow, Report, Snapshot, TableRecord, apply_changelog, compare, confirm, format_ppm, ledger_volume,
    parse_player_account, parse_snapshot, reconcile, render, run,
)
from config import Settings
from config.settings import REPO_ROOT
from storage.redis.stores import RedisPoolCache, pool_cache_key, wallet_cache_key
from tables.wallets import encode_state
from tests.e2e.helpers import Ledger, create_player, deposit, uid, webhook_body
from tests.e2e.test_jackpot_api import contribute, create_pool, pool, until
from tests.stack import free_port

# ---------------------------------------------------------------- the pure comparison

T = "t1"


def ledger_of(**accounts: int) -> dict[tuple[str, str], int]:
    """Ledger balances of tenant T, keyword names spelled with __ for ':'."""
    return {(T, name.replace("__", ":")): balance for name, balance in accounts.items()}


BALANCED_LEDGER = ledger_of(
    system__PSP_SETTLEMENT__sandbox__EUR=-15_000, system__PSP_FEES__sandbox__EUR=50,
    player__p1__CASH__EUR=11_950, player__p2__CASH__EUR=3_000,
)
RECORDS = {
    (T, "p1"): TableRecord({"CASH:EUR": 11_950, "BONUS:EUR": 0}, version=3),
    (T, "p2"): TableRecord({"CASH:EUR": 3_000, "BONUS:EUR": 0}, version=2),
}
SNAPSHOTS = {
    (T, "p1"): Snapshot({"CASH:EUR": 11_950, "BONUS:EUR": 0}, version=3),
    (T, "p2"): Snapshot({"CASH:EUR": 3_000, "BONUS:EUR": 0}, version=2),
}


def test_agreeing_sources_report_no_drift():
    report = compare(BALANCED_LEDGER, RECORDS, SNAPSHOTS, volume=15_050)
    assert report.drifting == ()
    assert (report.compared, report.players, report.players_not_cached) == (4, 2, 0)
    assert (report.total_drift, report.drift_milli_ppm, report.exit_code) == (0, 0, EXIT_OK)
    assert render(report).startswith("OK: 0 of 4 player accounts drift")


def test_an_extra_ledger_leg_is_drift_of_exactly_its_amount():
    ledger = {**BALANCED_LEDGER, (T, "player:p1:CASH:EUR"): 11_950 + 777}
    report = compare(ledger, RECORDS, SNAPSHOTS, volume=15_827)
    assert report.drifting == (
        AccountRow(T, "p1", "CASH", "EUR", ledger=12_727, table=11_950, table_version=3, cache=11_950,
                   cache_state=CACHED, cache_version=3),
    )
    row = report.drifting[0]
    assert (row.account, row.table_drift, row.cache_drift, row.drift) == ("player:p1:CASH:EUR", -777, 0, 777)
    assert report.total_drift == 777
    assert report.exit_code == EXIT_DRIFT
    # 777 / 15 827 = 49 093.321 ppm, computed in integers.
    assert report.drift_milli_ppm == 49_093_321
    text = render(report)
    assert "player:p1:CASH:EUR" in text and "-777" in text
    assert text.splitlines()[-1] == (
        "DRIFT: 1 of 4 player accounts drift (2 players, 0 not cached); "
        "0 of 0 pool accounts drift (0 pools, 0 not cached, 0 not conserving); "
        "total absolute drift 777 minor units = 49093.321 ppm of ledger volume 15827"
    )


def test_a_key_missing_from_the_record_counts_as_zero():
    ledger = {**BALANCED_LEDGER, (T, "player:p2:FREESPINS:EUR"): 40, (T, "player:p2:BONUS:EUR"): 0}
    report = compare(ledger, RECORDS, SNAPSHOTS, volume=15_090)
    [row] = report.drifting
    assert (row.account, row.ledger, row.table, row.table_drift) == ("player:p2:FREESPINS:EUR", 40, 0, -40)
    assert row.cache_state == NOT_IN_SNAPSHOT and row.cache_drift == 0


def test_a_hold_wallet_is_compared_with_the_ledger_but_not_with_the_snapshot():
    ledger = {**BALANCED_LEDGER, (T, "player:p1:CASH:EUR"): 11_450, (T, "player:p1:HOLD:EUR"): 500}
    records = {**RECORDS, (T, "p1"): TableRecord({"CASH:EUR": 11_450, "BONUS:EUR": 0, "HOLD:EUR": 500}, 4)}
    snapshots = {**SNAPSHOTS, (T, "p1"): Snapshot({"CASH:EUR": 11_450, "BONUS:EUR": 0}, 4)}
    assert compare(ledger, records, snapshots, 15_550).drifting == ()
    records[(T, "p1")] = TableRecord({"CASH:EUR": 11_450, "BONUS:EUR": 0, "HOLD:EUR": 400}, 4)
    [row] = compare(ledger, records, snapshots, 15_550).drifting
    assert (row.account, row.table_drift, row.cache_state) == ("player:p1:HOLD:EUR", -100, NOT_IN_SNAPSHOT)


def test_an_expired_snapshot_is_not_cached_not_drift():
    snapshots = {(T, "p1"): SNAPSHOTS[(T, "p1")]}
    report = compare(BALANCED_LEDGER, RECORDS, snapshots, 15_050)
    assert report.drifting == () and report.players_not_cached == 1
    assert "(2 players, 1 not cached)" in render(report)
    records = {**RECORDS, (T, "p2"): TableRecord({"CASH:EUR": 2_000, "BONUS:EUR": 0}, version=2)}
    [row] = compare(BALANCED_LEDGER, records, snapshots, 15_050).drifting
    assert (row.player_id, row.cache, row.cache_state, row.drift) == ("p2", None, NOT_CACHED, 1_000)
    assert "not cached" in render(Report(4, (row,), 15_050))


def test_a_snapshot_disagreeing_with_the_record_is_drift():
    snapshots = {**SNAPSHOTS, (T, "p2"): Snapshot({"CASH:EUR": 2_990, "BONUS:EUR": 0}, version=1)}
    [row] = compare(BALANCED_LEDGER, RECORDS, snapshots, 15_050).drifting
    assert (row.account, row.table_drift, row.cache, row.cache_drift, row.drift) == (
        "player:p2:CASH:EUR", 0, 2_990, -10, 10)
    assert "table 2 / cache 1" in render(Report(4, (row,), 15_050))


def test_a_player_without_a_table_record_drifts_by_the_ledger_balance():
    records = {(T, "p1"): RECORDS[(T, "p1")]}
    [row] = compare(BALANCED_LEDGER, records, SNAPSHOTS, 15_050).drifting
    assert (row.account, row.ledger, row.table, row.table_version, row.table_drift) == (
        "player:p2:CASH:EUR", 3_000, 0, None, -3_000)
    # Its snapshot still shows 3 000, which the (missing) record does not hold either.
    assert row.cache_drift == 3_000 and row.drift == 6_000


def test_drift_in_two_currencies_and_a_player_id_with_colons():
    ledger = {(T, "player:a:b:CASH:USD"): 10, (T, "system:PSP_SETTLEMENT:sandbox:USD"): -10}
    records = {(T, "a:b"): TableRecord({"CASH:USD": 7}, 1)}
    [row] = compare(ledger, records, {}, ledger_volume([(10, 10), (-10, 10)])).drifting
    assert (row.player_id, row.wallet_type, row.currency, row.table_drift) == ("a:b", "CASH", "USD", -3)
    assert parse_player_account("player:a:b:CASH:USD") == ("a:b", "CASH", "USD")
    assert parse_player_account("system:PSP_FEES:sandbox:EUR") is None
    assert parse_player_account("player:CASH:EUR") is None


def test_an_empty_ledger_has_no_ppm():
    report = compare({}, {(T, "p1"): TableRecord({"CASH:EUR": 5}, 1)}, {}, 0)
    assert report.total_drift == 5 and report.drift_milli_ppm is None
    assert format_ppm(None) == "n/a (empty ledger)" and format_ppm(1_500) == "1.500 ppm"


def test_confirm_keeps_only_accounts_drifting_in_both_passes():
    first = compare({**BALANCED_LEDGER, (T, "player:p1:CASH:EUR"): 1}, RECORDS, SNAPSHOTS, 15_050)
    second = compare({**BALANCED_LEDGER, (T, "player:p1:CASH:EUR"): 2, (T, "player:p2:CASH:EUR"): 9},
                     RECORDS, SNAPSHOTS, 15_060)
    confirmed = confirm(first, second)
    assert [(row.account, row.ledger) for row in confirmed.drifting] == [("player:p1:CASH:EUR", 2)]
    assert confirmed.ledger_volume == 15_060
    assert confirmed.notes == ("1 account(s) drifted in one pass only (in flight during the run), not reported",)
    assert confirm(first, compare(BALANCED_LEDGER, RECORDS, SNAPSHOTS, 15_050)).exit_code == EXIT_OK


def test_the_changelog_folds_into_the_latest_record_per_key():
    records: dict = {}
    one = WalletState(tenant_id=T, player_id="p1", registered=True, currency="EUR", country="DE",
                      balances={"CASH:EUR": 5}, version=1)
    apply_changelog(records, b"t1|p1", encode_state(one))
    apply_changelog(records, b"t1|p2", encode_state(WalletState(tenant_id=T, player_id="p2", version=1)))
    apply_changelog(records, b"t1|p1", encode_state(WalletState(
        tenant_id=T, player_id="p1", registered=True, currency="EUR", country="DE",
        balances={"CASH:EUR": 8, "HOLD:EUR": 2}, version=2)))
    assert records == {(T, "p1"): TableRecord({"CASH:EUR": 8, "HOLD:EUR": 2}, 2), (T, "p2"): TableRecord({}, 1)}
    apply_changelog(records, b"t1|p2", None)  # a deletion (tombstone)
    apply_changelog(records, b"t1|p1", b"")
    assert records == {}
    with pytest.raises(ValueError):
        apply_changelog(records, b"no-separator", encode_state(one))
    with pytest.raises(ValueError):
        apply_changelog(records, b"t1|p1", msgpack.packb({"v": 999}))


def test_snapshot_json():
    raw = json.dumps({"player_id": "p1", "version": 7, "wallets": [
        {"type": "CASH", "currency": "EUR", "available": 120, "held": 0, "version": 7},
        {"type": "BONUS", "currency": "EUR", "available": 30, "wager_required": 100}]})
    assert parse_snapshot(raw) == Snapshot({"CASH:EUR": 120, "BONUS:EUR": 30}, 7)


def test_names_match_the_agents():
    from agents.jackpot import AGENT as POOLS
    from agents.wallet import AGENT as WALLETS

    assert (WALLET_AGENT, POOL_AGENT) == (WALLETS, POOLS)


async def test_an_unreachable_service_is_an_error_not_drift():
    settings = Settings.from_env({"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"})
    out = io.StringIO()
    assert await run(settings, out=out) == EXIT_ERROR
    assert out.getvalue().startswith("ERROR: could not reconcile")


# ---------------------------------------------------------------- against the stack

async def credited_players(stack, client: BankrollClient, deposits: list[tuple[int, int]]) -> list[str]:
    """One player per (amount, fee), each with that deposit credited, flushed to the ledger."""
    players = []
    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        for amount, fee in deposits:
            player_id = uid("rec")
            await create_player(client, player_id)
            deposit_id = await deposit(client, player_id, amount)
            status, body = await client.psp_webhook("sandbox", "sandbox-secret", webhook_body(deposit_id, amount, fee))
            assert status == 200, body
            await ledger.wait_for_rows(f"deposit:{deposit_id}", 2 if fee else 1)
            players.append(player_id)
    return players


def reconcile_command(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.reconcile", "--tenant", stack.tenant_id, *args],
        cwd=REPO_ROOT, env=stack.env, capture_output=True, text=True, timeout=120,
    )


async def insert_leg(stack, player_id: str, debit: str, credit: str, amount: int) -> None:
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        await conn.execute(
            "INSERT INTO ledger_entries (tenant_id, operation_id, leg, debit_account, credit_account, amount_minor, "
            "currency, category, reason, player_id, created_at) "
            "VALUES ($1, $2, 0, $3, $4, $5, 'EUR', 'adjustment', 'reconciliation test', $6, now())",
            stack.tenant_id, uid("manual"), debit, credit, amount, player_id,
        )
    finally:
        await conn.close()


@pytest.mark.integration
async def test_credited_deposits_reconcile_with_zero_drift(stack, client):
    players = await credited_players(stack, client, [(12_050, 50), (3_000, 0), (999, 9)])
    report = await reconcile(stack.settings, tenant=stack.tenant_id)
    assert report.drifting == (), render(report)
    assert report.players >= len(players) and report.compared >= len(players)
    assert report.ledger_volume >= 12_050 + 50 + 3_000 + 999 + 9

    out = io.StringIO()
    assert await run(stack.settings, tenant=stack.tenant_id, out=out) == EXIT_OK
    assert out.getvalue().startswith("OK: 0 of ")

    done = reconcile_command(stack)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert "total absolute drift 0 minor units" in done.stdout


def rows_of(report: Report, player_id: str) -> list[AccountRow]:
    return [row for row in report.drifting if row.player_id == player_id]


# The two tests below share the stack's tenant with every end-to-end test, so they check
# their own player's rows exactly and measure the tenant's total against the drift found
# before they touched anything (the test above requires that to be zero).

@pytest.mark.integration
async def test_an_extra_ledger_row_is_reported_with_its_exact_drift(stack, client):
    [player_id] = await credited_players(stack, client, [(5_000, 0)])
    cash = f"player:{player_id}:CASH:EUR"
    before = await reconcile(stack.settings, tenant=stack.tenant_id)
    assert rows_of(before, player_id) == []
    await insert_leg(stack, player_id, "system:ADJUSTMENTS:EUR", cash, 777)

    done = reconcile_command(stack)
    assert done.returncode == EXIT_DRIFT, done.stdout + done.stderr
    [line] = [line for line in done.stdout.splitlines() if cash in line]
    assert line.split()[2:5] == ["5777", "5000", "-777"]  # ledger, table, table - ledger
    assert f"total absolute drift {before.total_drift + 777} minor units" in done.stdout

    report = await reconcile(stack.settings, tenant=stack.tenant_id)
    [row] = rows_of(report, player_id)
    assert (row.account, row.ledger, row.table, row.table_drift, row.cache_drift) == (cash, 5_777, 5_000, -777, 0)
    assert report.total_drift == before.total_drift + 777

    # The ledger is corrected the only way it can be: by a reversing posting. The tenant
    # reconciles as before, and later tests find it as clean as it was.
    await insert_leg(stack, player_id, cash, "system:ADJUSTMENTS:EUR", 777)
    done = reconcile_command(stack)
    assert done.returncode == before.exit_code, done.stdout + done.stderr
    assert cash not in done.stdout


@pytest.mark.integration
async def test_a_wrong_snapshot_is_drift_and_an_expired_one_is_not(stack, client):
    [player_id] = await credited_players(stack, client, [(2_500, 0)])
    redis_client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    key = wallet_cache_key(stack.tenant_id, player_id)
    try:
        snapshot = json.loads(await redis_client.hget(key, "json"))
        for wallet in snapshot["wallets"]:
            if wallet["type"] == "CASH":
                wallet["available"] += 25
        await redis_client.hset(key, "json", json.dumps(snapshot))
        report = await reconcile(stack.settings, tenant=stack.tenant_id)
        [row] = rows_of(report, player_id)
        assert (row.account, row.table_drift, row.cache, row.cache_drift) == (
            f"player:{player_id}:CASH:EUR", 0, 2_525, 25)

        await redis_client.delete(key)
        not_cached = await reconcile(stack.settings, tenant=stack.tenant_id)
        assert rows_of(not_cached, player_id) == []
        assert not_cached.total_drift == report.total_drift - 25
        assert not_cached.players_not_cached >= 1
    finally:
        await redis_client.delete(key)
        await redis_client.aclose()


def pool_rows(report: Report, pool_id: str) -> list[PoolRow]:
    return [row for row in report.jackpot.drifting if row.pool_id == pool_id]


async def pools_with_contributions(client) -> dict[str, dict]:
    """A progressive and a multi_tier pool, three contributions each, some above a cap so
    the reserves hold money too; pool id -> its view once the cached snapshot shows the
    last contribution."""
    progressive = await create_pool(client, kind="progressive", seed_amount=10_000, cap=10_050, contribution_bps=150)
    multi_tier = await create_pool(client, kind="multi_tier", contribution_bps=1_000, tiers=[
        {"name": "mini", "seed_amount": 100, "cap": 150, "share_bps": 6_000},
        {"name": "major", "seed_amount": 1_000, "share_bps": 4_000},
    ])
    views = {}
    for created in (progressive, multi_tier):
        pool_id = created["pool_id"]
        for bet in (1_000, 2_000, 3_000):
            status, body = await contribute(client, pool_id, bet)
            assert status == 200, body
        size = sum(body["sizes"].values())

        async def cached(pool_id: str = pool_id, size: int = size) -> dict | None:
            view = await pool(client, pool_id)
            return view if view["size"] == size else None

        views[pool_id] = await until(cached, what=f"the snapshot of {pool_id}")
    return views


@pytest.mark.integration
async def test_pools_made_through_the_api_reconcile_and_a_wrong_pool_snapshot_is_drift(stack, client):
    before = await reconcile(stack.settings, tenant=stack.tenant_id)
    views = await pools_with_contributions(client)
    progressive_id, multi_tier_id = views
    # 1.5 % of 6 000 in bets is 90: 50 fill the progressive pool to its cap, 40 wait in
    # its reserve.
    assert [(t["tier"], t["size"], t["reserve"]) for t in views[progressive_id]["tiers"]] == [("main", 10_050, 40)]
    assert [(t["tier"], t["size"], t["reserve"]) for t in views[multi_tier_id]["tiers"]] == [
        ("mini", 150, 310), ("major", 1_240, 0)]

    report = await reconcile(stack.settings, tenant=stack.tenant_id)
    assert pool_rows(report, progressive_id) == [] and pool_rows(report, multi_tier_id) == []
    assert report.jackpot.unbalanced == ()
    # Each pool is counted with a size and a reserve account per tier: 2 + 4.
    assert report.jackpot.pools == before.jackpot.pools + 2
    assert report.jackpot.compared == before.jackpot.compared + 6

    done = reconcile_command(stack)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert f"0 of {report.jackpot.compared} pool accounts drift ({report.jackpot.pools} pools" in done.stdout

    # A snapshot newer than the record (so no worker's write replaces it) showing 25 more.
    redis_client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    cache = RedisPoolCache(redis_client)
    try:
        snapshot = json.loads(await cache.get(stack.tenant_id, progressive_id))
        version = snapshot["version"]
        snapshot["tiers"][0]["size"] += 25
        snapshot["version"] = version + 1
        assert await cache.put(stack.tenant_id, progressive_id, version + 1, json.dumps(snapshot), 300)

        done = reconcile_command(stack)
        assert done.returncode == EXIT_DRIFT, done.stdout + done.stderr
        [line] = [line for line in done.stdout.splitlines() if progressive_id in line]
        # tenant, pool, tier, part, ledger, table, table - ledger, cache, cache - table, versions
        assert line.split() == [stack.tenant_id, progressive_id, "main", SIZE, "10050", "10050", "+0", "10075",
                                "+25", "table", str(version), "/", "cache", str(version + 1)]
        assert multi_tier_id not in done.stdout
        assert f"total absolute drift {before.total_drift + 25} minor units" in done.stdout

        report = await reconcile(stack.settings, tenant=stack.tenant_id)
        [row] = pool_rows(report, progressive_id)
        assert (row.part, row.ledger, row.table, row.cache, row.cache_drift, row.cache_state) == (
            SIZE, 10_050, 10_050, 10_075, 25, CACHED)
        assert row.account == f"system:JACKPOT_LIABILITY:{progressive_id}:EUR"
        assert report.total_drift == before.total_drift + 25

        # Without a snapshot the pool is not cached, which is not drift.
        await redis_client.delete(pool_cache_key(stack.tenant_id, progressive_id))
        not_cached = await reconcile(stack.settings, tenant=stack.tenant_id)
        assert pool_rows(not_cached, progressive_id) == []
        assert not_cached.total_drift == before.total_drift
    finally:
        await redis_client.delete(pool_cache_key(stack.tenant_id, progressive_id))
        await redis_client.aclose()
