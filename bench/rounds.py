"""Benchmark: settled game rounds per second through the `game.rounds` stream, counted
only when every posting of every round is committed in PostgreSQL, against a plain
PostgreSQL wallet (bench/baseline_sql.py) on the same PostgreSQL in the same run.

Funds many players, publishes N rounds (stake and, for half, a win) as fast as the
producer can, and measures from the first send to the moment the last round's ledger
rows are committed; prints the CPU milliseconds per settled round of every process, the
baseline's rate and the ratio.

    python bench/rounds.py --rounds 50000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer

from app.api.bus import bootstrap_servers
from app.client.signed import BankrollClient
from app.messages import wallet_key
from app.streaming import GAME_ROUNDS, topic_name
from bench import baseline_sql
from bench.common import cpu_per_operation_line, create_funded_players, running_stack, stack_cpu_s


async def run(stack, rounds: int, players: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = BankrollClient(stack.base_url, session=session)
        tag = str(int(time.time()))
        ids = [f"rp-{tag}-{i}" for i in range(players)]
        await create_funded_players(client, ids, 100_000_000)

    settings = stack.settings
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url), linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    legs = 0
    cpu_before = stack_cpu_s(stack)
    began = time.perf_counter()
    for i in range(rounds):
        win = 150 if i % 2 == 0 else 0
        legs += 3 if win else 2
        player = ids[i % players]
        message = {"round_id": f"r-{tag}-{i}", "tenant_id": stack.tenant_id, "player_id": player,
                   "provider": "bench", "bet": {"amount": 100, "currency": "EUR"},
                   "win": {"amount": win, "currency": "EUR"}}
        # Keyed as the README asks of game servers, so each round goes straight to its actor.
        await producer.send(topic_name(settings, GAME_ROUNDS), json.dumps(message).encode(),
                            key=wallet_key(stack.tenant_id, player))
    await producer.flush()
    sent = time.perf_counter() - began
    await producer.stop()
    print(f"published {rounds} rounds in {sent:.1f} s ({rounds / sent:.0f}/s)")

    pool = await asyncpg.create_pool(stack.env["DATABASE_URL"], min_size=1, max_size=2)
    deadline = time.monotonic() + 600
    found = 0
    while time.monotonic() < deadline:
        found = await pool.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE tenant_id = $1 AND operation_id LIKE $2",
            stack.tenant_id, f"round:bench:r-{tag}-%")
        if found >= legs:
            break
        await asyncio.sleep(0.5)
    done = time.perf_counter() - began
    cpu_after = stack_cpu_s(stack)
    await pool.close()
    rate = rounds / done
    print(f"{found}/{legs} ledger rows committed; {rounds} rounds settled end to end in {done:.1f} s: "
          f"{rate:.0f} rounds/s")
    print(cpu_per_operation_line(cpu_before, cpu_after, rounds))
    baseline = await baseline_sql.run(stack.env["DATABASE_URL"], rounds, players)
    print(f"plain PostgreSQL wallet (one transaction per round, 20 connections): {baseline:.0f} rounds/s; "
          f"Bankroll / baseline = {rate / baseline:.2f}")


def main() -> None:
    with open("/proc/loadavg") as load:
        print(f"machine load average: {load.read().split()[:3]}")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--players", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with running_stack(args.workers) as stack:
        asyncio.run(run(stack, args.rounds, args.players))


if __name__ == "__main__":
    main()
