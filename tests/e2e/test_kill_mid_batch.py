"""kill -9 of a worker in the middle of a stream of game rounds, at an exact point of a
batch: right before its PostgreSQL commit (nothing of the batch is stored, and its
messages were never acknowledged) and right after it (everything is stored, nothing was
published or acknowledged). The worker kills itself there (FAULT_CRASH_POINT); a worker
started afterwards must leave every player with the exact balance the rounds make, every
round's legs in the ledger exactly once, and nothing for the reconciliation to report."""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.api.bus import bootstrap_servers
from app.messages import wallet_key
from app.streaming import GAME_ROUND_RESULTS, GAME_ROUNDS, topic_name
from config.settings import AFTER_COMMIT, BEFORE_COMMIT
from tests.e2e.helpers import Ledger, cash, create_player, uid
from tests.e2e.test_recovery import pid_of, wait_until, worker_partitions
from tests.e2e.test_restart import reconcile
from tests.stack import Stack

pytestmark = pytest.mark.integration

PLAYERS = 6
ROUNDS = 240
FUNDING = 100_000
# The crashing worker takes batches of at most this many messages, so its fourth commit
# comes long before the last of the rounds: the crash is mid-stream, not after it.
CRASH_BATCH_MAX = 8
CRASH_AT_COMMIT = 4


def plan(players: list[str]) -> list[tuple[str, str, int, int]]:
    """(player, round id, bet, win) of every round: a win for one round in three."""
    tag = uid("r")
    rounds = []
    for i in range(ROUNDS):
        bet = 10 + 5 * (i % 7)
        rounds.append((players[i % len(players)], f"{tag}-{i}", bet, 0 if i % 3 else 3 * bet))
    return rounds


async def serving_every_partition(stack: Stack, name: str) -> None:
    partitions = list(range(stack.settings.topic_partitions))

    async def serving():
        owners = await worker_partitions(stack)
        return any(w.endswith(f"-{pid_of(stack, name)}") and p == partitions for w, p in owners.items())

    try:
        await wait_until(serving, 90, f"{name} serving every partition")
    except TimeoutError:
        raise AssertionError(stack.log_tail(name)) from None


async def publish(stack: Stack, messages: list[tuple[str, dict]]) -> None:
    settings = stack.settings
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url), linger_ms=5)
    await producer.start()
    try:
        for player, message in messages:
            await producer.send(topic_name(settings, GAME_ROUNDS), json.dumps(message).encode(),
                                key=wallet_key(stack.tenant_id, player))
        await producer.flush()
    finally:
        await producer.stop()


async def answers(stack: Stack, round_ids: set[str], timeout_s: float = 30.0) -> dict[str, list[tuple]]:
    """(code, body) of every answer on `game.rounds.results` to these rounds, once each has one."""
    settings = stack.settings
    consumer = AIOKafkaConsumer(topic_name(settings, GAME_ROUND_RESULTS),
                                bootstrap_servers=bootstrap_servers(settings.kafka_url), group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    found: dict[str, list[tuple]] = {}
    try:
        deadline = time.monotonic() + timeout_s
        while len(found) < len(round_ids) and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    result = json.loads(record.value)
                    if result["request_id"] in round_ids:
                        found.setdefault(result["request_id"], []).append((result["code"], result["body"]))
    finally:
        await consumer.stop()
    return found


@pytest.mark.parametrize("moment", [BEFORE_COMMIT, AFTER_COMMIT])
async def test_kill_9_mid_batch_loses_and_doubles_no_round(stack, client, moment):
    players = [uid("kb") for _ in range(PLAYERS)]
    for player in players:
        await create_player(client, player)
        status, body = await client.call("POST", "/v1/adjustments", {
            "adjustment_id": uid("fund"), "player_id": player, "wallet": "CASH", "currency": "EUR",
            "amount": FUNDING, "reason": "test funding"})
        assert status == 201, body
    rounds = plan(players)
    expected = {player: FUNDING for player in players}
    for player, _, bet, win in rounds:
        expected[player] += win - bet
    messages = [(player, {"round_id": round_id, "tenant_id": stack.tenant_id, "player_id": player,
                          "provider": "acme", "bet": {"amount": bet, "currency": "EUR"},
                          "win": {"amount": win, "currency": "EUR"}})
                for player, round_id, bet, win in rounds]
    # A game server that sends again what it is unsure of: every fifth round twice.
    messages += messages[::5]
    operations = [f"round:acme:{round_id}:{player}" for player, round_id, _, _ in rounds]

    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, stack.stop_workers)
    crashing = uid("crashing")
    proc = stack.start_worker(crashing, FAULT_CRASH_POINT=f"{moment}:{CRASH_AT_COMMIT}",
                             WORKER_BATCH_MAX=str(CRASH_BATCH_MAX))
    fresh = uid("worker")
    try:
        await serving_every_partition(stack, crashing)
        await publish(stack, messages)
        try:
            returncode = await loop.run_in_executor(None, lambda: proc.wait(timeout=60))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker never reached its crash point\n{stack.log_tail(crashing)}") from None
        assert returncode == -signal.SIGKILL, stack.log_tail(crashing)
        assert f"crash point {moment}:{CRASH_AT_COMMIT} reached" in stack.log_tail(crashing)
        async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
            applied = await applied_rounds(ledger, operations)
        # No more than the committed batches hold: the stream was cut in its middle.
        committed = CRASH_AT_COMMIT if moment == AFTER_COMMIT else CRASH_AT_COMMIT - 1
        assert applied <= committed * CRASH_BATCH_MAX
        if moment == AFTER_COMMIT:
            assert applied > 0
        del stack.workers[crashing]
        stack.start_worker(fresh)
        await serving_every_partition(stack, fresh)
    finally:
        if crashing in stack.workers:
            stack.kill_worker(crashing)
        if fresh not in stack.workers:
            stack.start_worker(fresh)
            await loop.run_in_executor(None, stack.wait_ready)

    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        async def all_applied() -> bool:
            return await applied_rounds(ledger, operations) == ROUNDS

        await wait_until(all_applied, 60, "every round applied")
        # Each round's legs once: its stake in and out of HOLD, and its win when it has one.
        rows = await ledger.pool.fetch(
            "SELECT operation_id, count(*) AS legs, sum(amount_minor) AS total FROM ledger_entries "
            "WHERE tenant_id = $1 AND operation_id = ANY($2) GROUP BY operation_id", stack.tenant_id, operations)
        found = {row["operation_id"]: (row["legs"], row["total"]) for row in rows}
        assert found == {f"round:acme:{round_id}:{player}": (3 if win else 2, 2 * bet + win)
                         for player, round_id, bet, win in rounds}
        balances = await ledger.balances()
    assert {p: balances[f"player:{p}:CASH:EUR"] for p in players} == expected
    # Every round is answered, also those whose first answer died with the worker, and
    # every answer of a round is its one result.
    answered = await answers(stack, {round_id for _, round_id, _, _ in rounds})
    assert {round_id: {json.dumps(answer, sort_keys=True) for answer in found}
            for round_id, found in answered.items()} == {
        round_id: {json.dumps(("ok", {"round_id": round_id, "status": "SETTLED", "bet": bet, "win": win,
                                      "cash_delta": win - bet}), sort_keys=True)}
        for _, round_id, bet, win in rounds}

    # Reads are served from the snapshots the agent publishes after each commit.
    for _ in range(80):
        read = {p: await cash(client, p) for p in players}
        if read == expected:
            break
        await asyncio.sleep(0.25)
    assert read == expected
    done = await loop.run_in_executor(None, reconcile, stack)
    assert done.returncode == 0, done.stdout + done.stderr


async def applied_rounds(ledger: Ledger, operations: list[str]) -> int:
    return await ledger.pool.fetchval(
        "SELECT count(DISTINCT operation_id) FROM ledger_entries WHERE tenant_id = $1 AND operation_id = ANY($2)",
        ledger.tenant_id, operations)
