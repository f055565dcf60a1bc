"""Restarts of the whole stack on a stack of its own: the embedded broker keeps nothing and
Redis starts empty, so every record and answer comes back from PostgreSQL (SPEC §5).

- a graceful restart keeps every kind of state, and a request replayed afterwards gets
  the answer it got before, byte for byte;
- kill -9 of the broker under load, then the stack again: every operation answered 2xx
  is there, and the reconciliation finds no drift;
- five restarts under load: balances exact;
- a worker whose changelog is behind PostgreSQL (restarted on a broker that kept its
  topics, after PostgreSQL moved on) serves the PostgreSQL state."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.client.signed import BankrollClient
from app.messages import wallet_key
from config.settings import REPO_ROOT
from storage.redis.stores import wallet_cache_key
from tables.wallets import decode_state, encode_state
from tests.e2e.helpers import Ledger, cash, create_player, deposit, signed_at, uid, webhook_body
from tests.e2e.test_jackpot_api import contribute, create_pool, pool
from tests.stack import Stack, running

# A broker named by KAFKA_URL is not this test's to kill and restart empty.
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(bool(os.environ.get("KAFKA_URL", "").strip()), reason="restarts the embedded broker")]


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory):
    with running(tmp_path_factory.mktemp("restart")) as s:
        yield s


async def restart(stack: Stack, **how) -> None:
    await asyncio.get_running_loop().run_in_executor(None, lambda: stack.restart(**how))


def reconcile(stack: Stack) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.reconcile", "--tenant", stack.tenant_id],
                          cwd=REPO_ROOT, env=stack.env, capture_output=True, text=True, timeout=120)


async def read(client: BankrollClient, path: str) -> dict:
    status, body = await client.call("GET", path)
    assert status == 200, (path, body)
    return body


async def test_a_restart_keeps_every_balance_hold_limit_pool_and_answer(own_stack):
    stack = own_stack
    async with BankrollClient(stack.base_url) as client:
        player = uid("keep")
        await create_player(client, player)
        credited = await deposit(client, player, 20_000)
        assert (await client.psp_webhook("sandbox", "sandbox-secret", webhook_body(credited, 20_000, 100)))[0] == 200
        pending = await deposit(client, player, 700)
        kyc = await client.call("PUT", f"/v1/players/{player}/kyc", {"kyc_status": "VERIFIED", "aml_hold": False})
        assert kyc[0] == 200, kyc
        limits = {"deposit": {"day": 50_000}}
        assert (await client.call("PUT", f"/v1/players/{player}/limits", limits))[0] == 200
        # A raised limit waits for its cooling period: pending across the restart.
        assert (await client.call("PUT", f"/v1/players/{player}/limits", {"deposit": {"day": 90_000}}))[0] == 200
        bonus = {"bonus_id": uid("bonus"), "player_id": player, "amount": 1_000, "currency": "EUR",
                 "wager_required": 5_000, "expires_at": _now() + 86_400}
        status, body = await client.call("POST", "/v1/bonuses", bonus)
        assert status == 201, body
        withdrawal = {"withdrawal_id": uid("wd"), "player_id": player, "amount": 3_000, "currency": "EUR",
                      "method": "card", "destination": "IBAN-OK"}
        status, held = await client.call("POST", "/v1/withdrawals", withdrawal)
        assert status == 202, held
        bet = {"bet_id": uid("bet"), "player_id": player, "amount": 400, "currency": "EUR",
               "source_policy": "casino"}
        status, placed = await client.call("POST", "/v1/bets/place", bet)
        assert status == 201, placed
        settle = {"bet_id": bet["bet_id"], "result": "WIN", "payout": 1_000}
        status, settled = await client.call("POST", "/v1/bets/settle", settle)
        assert status == 200, settled
        jackpot = await create_pool(client, kind="must_drop", seed_amount=1_000, contribution_bps=100,
                                    drop_min=50_000, drop_max=90_000)
        for _ in range(3):
            assert (await contribute(client, jackpot["pool_id"], 10_000))[0] in (200, 201)

        wallets = await read(client, f"/v1/wallets?player_id={player}")
        limits_before = await read(client, f"/v1/players/{player}/limits")
        withdrawal_before = await read(client, f"/v1/withdrawals/{withdrawal['withdrawal_id']}")
        pool_before = await pool(client, jackpot["pool_id"])
        # The first answer of a request, to be asked again after the restart.
        deposit_request = {"deposit_id": pending, "player_id": player, "amount": 700, "currency": "EUR",
                           "method": "card", "idempotency_key": f"k-{pending}"}

    await restart(stack)

    async with BankrollClient(stack.base_url) as client:
        assert await read(client, f"/v1/wallets?player_id={player}") == wallets
        assert await read(client, f"/v1/players/{player}/limits") == limits_before
        assert await read(client, f"/v1/withdrawals/{withdrawal['withdrawal_id']}") == withdrawal_before
        assert await pool(client, jackpot["pool_id"]) == pool_before
        # Stored answers replay as first given; another body under the key is a conflict.
        assert await signed_at(client, "POST", "/v1/bets/settle", settle, _now() - 60) == (200, settled)
        assert await signed_at(client, "POST", "/v1/withdrawals", withdrawal, _now() - 60) == (202, held)
        status, body = await signed_at(client, "POST", "/v1/deposits", deposit_request, _now() - 60)
        assert (status, body) == (202, {"deposit_id": pending, "state": "PENDING"})
        status, body = await signed_at(client, "POST", "/v1/bets/settle", {**settle, "payout": 5}, _now() - 60)
        assert (status, body["error"]["code"]) == (409, "idempotency_conflict")
        # The pending deposit is still pending: its webhook credits it now.
        assert (await client.psp_webhook("sandbox", "sandbox-secret", webhook_body(pending, 700)))[0] == 200
        assert await cash(client, player) == wallets["wallets"][0]["available"] + 700
    done = reconcile(stack)
    assert done.returncode == 0, done.stdout + done.stderr


def _now() -> int:
    return int(time.time())


async def test_kill_9_of_the_broker_under_load_loses_no_answered_operation(own_stack):
    stack = own_stack
    async with BankrollClient(stack.base_url) as client:
        players = [uid("bk") for _ in range(6)]
        for player in players:
            await create_player(client, player)
        answered: list[tuple[str, str, int]] = []  # (player, deposit id, amount) answered 2xx

        async def one(player: str, n: int) -> None:
            deposit_id = uid("dep")
            amount = 1_000 + n
            try:
                status, _ = await client.call("POST", "/v1/deposits", {
                    "deposit_id": deposit_id, "player_id": player, "amount": amount, "currency": "EUR",
                    "method": "card", "idempotency_key": deposit_id})
            except Exception:
                return
            if status == 202:
                answered.append((player, deposit_id, amount))

        load = [asyncio.create_task(one(players[n % len(players)], n)) for n in range(120)]
        deadline = time.monotonic() + 60
        while len(answered) < 20 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        stack.kill_service("broker")
        await asyncio.gather(*load)
    assert answered, "no deposit was answered before the broker died"

    await restart(stack)

    async with BankrollClient(stack.base_url) as client:
        # Every deposit answered 202 is pending in its player's record: its webhook credits it.
        expected = {p: 0 for p in players}
        for player, deposit_id, amount in answered:
            status, body = await client.psp_webhook("sandbox", "sandbox-secret", webhook_body(deposit_id, amount))
            assert status == 200, (deposit_id, body)
            assert body["state"] == "SUCCEEDED"
            expected[player] += amount
        for player in players:
            assert await cash(client, player) == expected[player]
    done = reconcile(stack)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_five_restarts_under_load_keep_balances_exact(own_stack):
    stack = own_stack
    async with BankrollClient(stack.base_url) as client:
        players = [uid("r5") for _ in range(4)]
        for player in players:
            await create_player(client, player)
    expected = {p: 0 for p in players}
    hooks: list[dict] = []
    for round_no in range(5):
        async with BankrollClient(stack.base_url) as client:
            async def one(player: str, n: int) -> None:
                deposit_id = f"dep-{round_no}-{n}-{player}"
                body = {"deposit_id": deposit_id, "player_id": player, "amount": 100 + n, "currency": "EUR",
                        "method": "card", "idempotency_key": deposit_id}
                # The client retries until it holds an answer, across the restart if need be.
                for _ in range(200):
                    try:
                        status, _ = await client.call("POST", "/v1/deposits", body)
                        if status == 202:
                            hooks.append(webhook_body(deposit_id, 100 + n))
                            expected[player] += 100 + n
                            return
                    except Exception:
                        pass
                    await asyncio.sleep(0.1)
                raise AssertionError(f"deposit {deposit_id} never answered")

            load = [asyncio.create_task(one(players[n % len(players)], n)) for n in range(16)]
            await asyncio.sleep(0.3)
            restarting = asyncio.ensure_future(restart(stack))
            await restarting
            await asyncio.gather(*load)
    async with BankrollClient(stack.base_url) as client:
        for hook in hooks:
            for _ in range(50):
                status, body = await client.psp_webhook("sandbox", "sandbox-secret", hook)
                if status == 200:
                    break
                await asyncio.sleep(0.2)
            assert status == 200, body
        for player in players:
            assert await cash(client, player) == expected[player]
    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        balances = await ledger.balances()
    for player in players:
        assert balances.get(f"player:{player}:CASH:EUR", 0) == expected[player]
    done = reconcile(stack)
    assert done.returncode == 0, done.stdout + done.stderr


async def test_a_worker_whose_changelog_is_behind_postgresql_serves_the_postgresql_state(own_stack):
    """The broker kept its topics, but PostgreSQL holds a newer record than the changelog
    (as after a worker that committed and died before its changelog write, or after a
    restore of the broker from an older backup): made here by writing the newer version,
    with the ledger leg that explains it, into PostgreSQL directly."""
    stack = own_stack
    async with BankrollClient(stack.base_url) as client:
        player = uid("behind")
        await create_player(client, player)
        deposit_id = await deposit(client, player, 5_000)
        assert (await client.psp_webhook("sandbox", "sandbox-secret", webhook_body(deposit_id, 5_000)))[0] == 200
        before = await read(client, f"/v1/wallets?player_id={player}")
    await _advance_in_postgres(stack, player, cash_delta=1_234)
    # A new worker recovers from the changelog (version n), then from PostgreSQL (n + 1).
    await asyncio.get_running_loop().run_in_executor(None, stack.stop_bankroll)
    stack.start_worker("worker-1")
    stack.start_web()
    await asyncio.get_running_loop().run_in_executor(None, stack.wait_ready)
    async with BankrollClient(stack.base_url) as client:
        status, view = await client.call("GET", f"/v1/wallets?player_id={player}&types=CASH")
        assert status == 200, view
        assert view["version"] == before["version"] + 1
        assert view["wallets"][0]["available"] == 5_000 + 1_234


async def _advance_in_postgres(stack: Stack, player: str, cash_delta: int) -> None:
    """Write a newer version of the player's record straight into PostgreSQL, with the
    ledger leg that explains it, as if another worker had committed it."""
    key = wallet_key(stack.tenant_id, player)
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        async with conn.transaction():
            row = await conn.fetchrow("SELECT version, record FROM agent_records WHERE agent = 'wallet' AND key = $1",
                                      key)
            state = decode_state(bytes(row["record"]))
            balances = {**state.balances, "CASH:EUR": state.balances["CASH:EUR"] + cash_delta}
            newer = dataclasses.replace(state, balances=balances, version=state.version + 1)
            await conn.execute(
                "UPDATE agent_records SET version = $2, prior_version = $3, record = $4 "
                "WHERE agent = 'wallet' AND key = $1", key, newer.version, state.version, encode_state(newer))
            await conn.execute(
                "INSERT INTO ledger_entries (tenant_id, operation_id, leg, debit_account, credit_account, "
                "amount_minor, currency, category, reason, player_id, created_at) "
                "VALUES ($1, $2, 0, 'system:ADJUSTMENTS:EUR', $3, $4, 'EUR', 'adjustment', 'restore test', $5, now())",
                stack.tenant_id, uid("restore"), f"player:{player}:CASH:EUR", cash_delta, player)
    finally:
        await conn.close()
    # The cached snapshot would answer the read before the agent does.
    client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        await client.delete(wallet_cache_key(stack.tenant_id, player))
    finally:
        await client.aclose()
