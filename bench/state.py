"""Benchmark: memory and recovery of the agents' state (issue 8).

1. Worker RSS and the largest wallet record after OPERATIONS game rounds over PLAYERS
   players (targets: RSS <= 400 MB, a record <= 4 KB whatever the player's history).
2. Seconds from a worker's start to ready with RESTORE_PLAYERS players, recovered from the
   changelog (the broker kept it) and restored from PostgreSQL (the broker restarted
   empty); target <= 15 s each.

Commands go straight onto the topics (no HTTP), so the figures are the worker's.

    python -m bench.state --operations 1000000 --players 10000 --restore-players 100000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from app.api.bus import bootstrap_servers
from app.domain.wallet.core import Adjust, CreatePlayer
from app.messages import CommandEnvelope, wallet_key
from app.run import rss_mb
from app.topics import GAME_ROUNDS, WALLET_COMMANDS, topic_name
from bench.common import announced_partitions, print_load_average, running_stack, tree_cpu_s
from storage.redis.stores import worker_key_prefix


async def produce(stack, messages, topic: str) -> int:
    settings = stack.settings
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url), linger_ms=20,
                                max_batch_size=512 * 1024)
    await producer.start()
    sent = 0
    try:
        pending = []
        for key, value in messages:
            pending.append(await producer.send(topic_name(settings, topic), value, key=key))
            sent += 1
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def command(tenant_id: str, player: str, cmd: object, key: str) -> tuple[bytes, bytes]:
    envelope = CommandEnvelope.wrap(cmd, tenant_id=tenant_id, operation_key=key, request_hash=key,
                                    now_ms=int(time.time() * 1000), reply_to="", request_id="")
    return wallet_key(tenant_id, player), envelope.encode()


async def create_players(stack, players: list[str], funded_minor: int = 0) -> None:
    def messages():
        for p in players:
            yield command(stack.tenant_id, p, CreatePlayer(p, "EUR", "DE"), f"player:{p}")
            if funded_minor:
                yield command(stack.tenant_id, p, Adjust(f"fund-{p}", "CASH", "EUR", funded_minor, "benchmark"),
                              f"adjustment:fund-{p}")

    await produce(stack, messages(), WALLET_COMMANDS)


async def processed(db: asyncpg.Pool, topic: str) -> int:
    return await db.fetchval("SELECT coalesce(sum(next_offset), 0) FROM stream_positions "
                             "WHERE consumer = 'wallet' AND topic = $1", topic)


async def wait_processed(db: asyncpg.Pool, topic: str, total: int, timeout_s: float) -> float:
    began = time.monotonic()
    while await processed(db, topic) < total:
        if time.monotonic() - began > timeout_s:
            raise TimeoutError(f"{await processed(db, topic)} of {total} messages of {topic} processed")
        await asyncio.sleep(0.5)
    return time.monotonic() - began


async def memory(stack, operations: int, players: int) -> None:
    db = await asyncpg.create_pool(stack.env["DATABASE_URL"], min_size=1, max_size=2)
    ids = [f"m{i}" for i in range(players)]
    await create_players(stack, ids, funded_minor=10**12)
    await wait_processed(db, topic_name(stack.settings, WALLET_COMMANDS), 2 * players, 600)
    worker = stack.workers["worker-1"].pid
    cpu_before, began = tree_cpu_s(worker), time.monotonic()

    def rounds():
        for i in range(operations):
            player = ids[i % players]
            body = {"round_id": f"r{i}", "tenant_id": stack.tenant_id, "player_id": player, "provider": "bench",
                    "bet": {"amount": 100, "currency": "EUR"}, "win": {"amount": 150 if i % 2 else 0,
                                                                       "currency": "EUR"}}
            yield wallet_key(stack.tenant_id, player), json.dumps(body).encode()

    produced = asyncio.create_task(produce(stack, rounds(), GAME_ROUNDS))
    topic = topic_name(stack.settings, GAME_ROUNDS)
    next_report = time.monotonic() + 30
    while not produced.done() or await processed(db, topic) < operations:
        await asyncio.sleep(1)
        if time.monotonic() >= next_report:
            next_report += 30
            print(f"  {await processed(db, topic):>9} rounds settled, worker RSS {rss_mb(worker):6.0f} MB", flush=True)
    elapsed = time.monotonic() - began
    cpu = tree_cpu_s(worker) - cpu_before
    largest, average, count = await db.fetchrow(
        "SELECT max(length(record)), avg(length(record))::int, count(*) FROM agent_records WHERE agent = 'wallet'")
    await db.close()
    print(f"{operations} rounds over {players} players settled in {elapsed:.0f} s ({operations / elapsed:.0f}/s), "
          f"worker CPU {cpu * 1000 / operations:.3f} ms per round")
    print(f"worker RSS {rss_mb(worker):.0f} MB (target <= 400 MB); wallet records: {count}, "
          f"largest {largest} bytes (target <= 4096), average {average} bytes")


async def ready_in(stack, timeout_s: float = 300) -> float:
    """Seconds until a worker announces it serves every partition."""
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        owned = {p for parts in (await announced_partitions(stack)).values() for p in parts}
        if len(owned) == stack.settings.topic_partitions:
            return time.monotonic() - began
        await asyncio.sleep(0.1)
    raise TimeoutError("the worker did not get ready")


async def forget_workers(stack) -> None:
    client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        async for key in client.scan_iter(match=worker_key_prefix(stack.settings.faust_app_id) + "*"):
            await client.delete(key)
    finally:
        await client.aclose()


async def recovery(stack, players: int) -> None:
    db = await asyncpg.create_pool(stack.env["DATABASE_URL"], min_size=1, max_size=2)
    ids = [f"r{i}" for i in range(players)]
    await create_players(stack, ids)
    await wait_processed(db, topic_name(stack.settings, WALLET_COMMANDS), players, 900)
    records = await db.fetchval("SELECT count(*) FROM agent_records WHERE agent = 'wallet'")
    await db.close()

    stack.stop_bankroll()
    await forget_workers(stack)
    stack.start_worker("worker-1")
    from_changelog = await ready_in(stack)
    print(f"{records} wallet records: worker start to ready from the changelog: {from_changelog:.1f} s "
          f"(target <= 15 s)")

    stack.stop_bankroll()
    stack.restart_service("broker")
    await forget_workers(stack)
    stack.start_worker("worker-1")
    from_postgres = await ready_in(stack)
    print(f"{records} wallet records: worker start to ready restored from PostgreSQL (empty broker): "
          f"{from_postgres:.1f} s (target <= 15 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--operations", type=int, default=1_000_000)
    parser.add_argument("--players", type=int, default=10_000)
    parser.add_argument("--restore-players", type=int, default=100_000)
    args = parser.parse_args()
    print_load_average()
    if args.operations:
        with running_stack() as stack:
            asyncio.run(memory(stack, args.operations, args.players))
    if args.restore_players:
        with running_stack() as stack:
            asyncio.run(recovery(stack, args.restore_players))


if __name__ == "__main__":
    main()
