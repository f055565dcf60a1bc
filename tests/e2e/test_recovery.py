"""kill -9 tests: workers die mid-stream, partitions move, nothing is lost or doubled."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from app.api.bus import bootstrap_servers
from app.messages import wallet_key
from app.topics import GAME_ROUNDS, topic_name
from storage.redis.stores import wallet_cache_key, worker_key_prefix
from tests.e2e.helpers import Ledger, cash, create_player, deposit, uid, webhook_body

pytestmark = pytest.mark.integration


async def worker_partitions(stack) -> dict[str, list[int]]:
    client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        out = {}
        async for key in client.scan_iter(match=worker_key_prefix(stack.settings.faust_app_id) + "*"):
            raw = await client.get(key)
            if raw:
                info = json.loads(raw)
                out[info["worker_id"]] = info["partitions"]
        return out
    finally:
        await client.aclose()


async def wait_until(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{what} not reached in {timeout_s} s")


def pid_of(stack, name: str) -> str:
    return str(stack.workers[name].pid)


async def settle_all(client, hooks: list[dict], attempts: int = 40) -> None:
    """The PSP redelivers every webhook until it is acknowledged, as real PSPs do."""
    pending = list(hooks)
    for _ in range(attempts):
        results = await asyncio.gather(*(client.psp_webhook("sandbox", "sandbox-secret", h) for h in pending),
                                       return_exceptions=True)
        pending = [h for h, r in zip(pending, results) if isinstance(r, BaseException) or r[0] != 200]
        if not pending:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"{len(pending)} webhooks never acknowledged")


async def test_two_workers_split_partitions_and_the_survivor_restores_state(stack, client):
    partitions = set(range(stack.settings.topic_partitions))
    players = [uid("p") for _ in range(12)]
    expected = {}
    for player in players:
        await create_player(client, player)
        deposit_id = await deposit(client, player, 1_000)
        await settle_all(client, [webhook_body(deposit_id, 1_000, fee=10)])
        expected[player] = 990

    first = next(iter(stack.workers))
    stack.start_worker("worker-2")

    async def split():
        owners = await worker_partitions(stack)
        live = {w: set(p) for w, p in owners.items() if w.endswith(pid_of(stack, first))
                or w.endswith(pid_of(stack, "worker-2"))}
        sets = list(live.values())
        return (len(sets) == 2 and all(sets) and not (sets[0] & sets[1]) and sets[0] | sets[1] == partitions
                and live)

    try:
        shares = await wait_until(split, 60, "two workers sharing the partitions")
    except TimeoutError:
        raise AssertionError(f"{await worker_partitions(stack)}\n{stack.log_tail('worker-2')}") from None
    assert len(shares) == 2

    stack.kill_worker(first)

    async def survivor_owns_all():
        owners = await worker_partitions(stack)
        mine = [set(p) for w, p in owners.items() if w.endswith(pid_of(stack, "worker-2"))]
        return mine and mine[0] == partitions

    await wait_until(survivor_owns_all, 60, "the survivor owning every partition")
    # Each player's next deposit is decided by the survivor against the restored record.
    hooks = []
    for player in players:
        deposit_id = await deposit(client, player, 500)
        hooks.append(webhook_body(deposit_id, 500))
        expected[player] += 500
    await settle_all(client, hooks)
    for player in players:
        assert await cash(client, player) == expected[player]


async def test_kill_9_mid_stream_loses_and_doubles_nothing(stack, client):
    players = [uid("p") for _ in range(8)]
    hooks, expected = [], {p: 0 for p in players}
    for player in players:
        await create_player(client, player)
        for i in range(20):
            amount, fee = 1_000 + i, i % 3
            deposit_id = await deposit(client, player, amount)
            hooks.append(webhook_body(deposit_id, amount, fee=fee))
            expected[player] += amount - fee

    await kill_9_midway(stack, lambda hook: client.psp_webhook("sandbox", "sandbox-secret", hook), hooks)
    await settle_all(client, hooks)
    await settle_all(client, hooks)  # every webhook delivered once more: a duplicate storm

    for player in players:
        assert await cash(client, player) == expected[player]
    legs = sum(2 if h["fee"] else 1 for h in hooks)
    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        operations = [f"deposit:{h['deposit_id']}" for h in hooks]

        async def all_rows():
            rows = await ledger.pool.fetchval(
                "SELECT count(*) FROM ledger_entries WHERE tenant_id = $1 AND operation_id = ANY($2)",
                stack.tenant_id, operations)
            return rows == legs

        await wait_until(all_rows, 30, "every leg in PostgreSQL")
        balances = await ledger.balances()
        for player in players:
            assert balances[f"player:{player}:CASH:EUR"] == expected[player]


async def _done_at_least(tasks, n: int) -> bool:
    return sum(t.done() for t in tasks) >= n


async def kill_9_midway(stack, send, items: list, concurrency: int = 16) -> list:
    """Send every item (16 at a time); once a quarter are answered, kill -9 every worker
    and start a fresh one. Returns each send's answer, or the exception it ended in, once
    the new worker serves every partition."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item):
        async with semaphore:
            return await send(item)

    tasks = [asyncio.create_task(one(item)) for item in items]
    await wait_until(lambda: _done_at_least(tasks, len(tasks) // 4), 30, "a quarter of the requests answered")
    for name in list(stack.workers):
        stack.kill_worker(name)
    stack.start_worker(uid("worker"))
    answers = await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.get_running_loop().run_in_executor(None, stack.wait_ready)
    return answers


async def test_a_new_worker_recovers_every_record_of_multi_record_changelog_batches(stack, client):
    """After a burst of rounds whose offsets are committed, a worker that takes over must
    serve every player's latest record. (Whether the burst ends the changelog in a batch
    of several records depends on timing; tests/integration/test_table_recovery.py makes
    that case certain.)"""
    # Every player on one partition, so the burst's last changelog batches hold several
    # records of that partition.
    partitioner = DefaultPartitioner()
    partitions = list(range(stack.settings.topic_partitions))
    players: list[str] = []
    while len(players) < 10:
        candidate = uid("p")
        if partitioner(wallet_key(stack.tenant_id, candidate), partitions, partitions) == 0:
            players.append(candidate)
    for player in players:
        await create_player(client, player)
        assert (await client.call("POST", "/v1/adjustments", {
            "adjustment_id": uid("fund"), "player_id": player, "wallet": "CASH", "currency": "EUR",
            "amount": 10_000, "reason": "test funding"}))[0] == 201
    settings = stack.settings
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url), linger_ms=20)
    await producer.start()
    rounds = []
    try:
        for i in range(300):
            player = players[i % len(players)]
            round_id = uid("r")
            rounds.append(f"round:acme:{round_id}:{player}")
            message = {"round_id": round_id, "tenant_id": stack.tenant_id, "player_id": player,
                       "provider": "acme", "bet": {"amount": 7, "currency": "EUR"}}
            await producer.send(topic_name(settings, GAME_ROUNDS), json.dumps(message).encode(),
                                key=player.encode())
        await producer.flush()
    finally:
        await producer.stop()
    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        async def all_applied():
            return await ledger.pool.fetchval(
                "SELECT count(DISTINCT operation_id) FROM ledger_entries WHERE tenant_id = $1 "
                "AND operation_id = ANY($2)", stack.tenant_id, rounds) == len(rounds)

        await wait_until(all_applied, 60, "every round applied")
    # Past the commit interval, so the rounds' offsets are committed: the new worker will not
    # process them again, and only a complete changelog recovery has their effects.
    await asyncio.sleep(3 * stack.settings.broker_commit_interval_s + 1)

    for name in list(stack.workers):
        stack.kill_worker(name)
    fresh = uid("worker")
    stack.start_worker(fresh)

    async def fresh_worker_serves_all():
        owners = await worker_partitions(stack)
        return any(w.endswith(pid_of(stack, fresh)) and p == partitions for w, p in owners.items())

    await wait_until(fresh_worker_serves_all, 90, "the new worker serving every partition")

    # Read the recovered records themselves: with the cached snapshots gone, the read goes
    # to the agent (a stale record's next snapshot would lose to the newer cached one).
    redis_client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        await redis_client.delete(*(wallet_cache_key(stack.tenant_id, p) for p in players))
    finally:
        await redis_client.aclose()
    for player in players:
        assert await cash(client, player) == 10_000 - 30 * 7, player
