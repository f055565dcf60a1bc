"""Benchmark: jackpot contributions through HTTP at fixed rates (open loop), and the time
from a trigger to the wallet's credit of the winner.

Contributions go to --pools progressive pools (one pool is one key, so one actor takes all
of its contributions in order; several pools spread over partitions). Requests start on
a fixed schedule whatever the answers do, so a slow server shows as latency. Then
--triggers manual triggers, each for a fresh pool and player, are sent at --trigger-rate
per second; the time from sending a trigger to seeing its `jp.payout.credited` event
(emitted once the wallet agent has credited the winner) is the trigger -> credit latency.

Without --rates the plain PostgreSQL wallet (bench/baseline_sql.py) is measured first on
the same PostgreSQL and contributions go at one third of its rounds per second. Each
target is printed beside its figure with PASS/MISS: contribution p99 (--p99-target-ms,
50) and trigger -> credit p95 (--credit-p95-target-ms, 100). Also the CPU milliseconds
per contribution of every process.

    python -m bench.jackpot                               # baseline first, rate = baseline / 3
    python -m bench.jackpot --rates 100,250,500 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
from aiokafka import AIOKafkaConsumer

from app.api.bus import bootstrap_servers
from app.client.signed import BankrollClient
from app.topics import JP_PAYOUT_CREDITED, topic_name
from bench.common import (add_baseline_arguments, cpu_per_operation_line, latency_line, measure_baseline, open_loop,
                          percentile, print_load_average, running_stack, stack_cpu_s, target_line)


async def contributions(stack, client: BankrollClient, tag: str, rate: float, seconds: float, pools: int,
                        p99_target_ms: float) -> None:
    pool_ids = [f"bp-{tag}-{int(rate)}-{i}" for i in range(pools)]
    for pool_id in pool_ids:
        status, body = await client.call("POST", "/v1/jp/pools", {
            "pool_id": pool_id, "kind": "progressive", "brand_ids": ["b1"], "region": "mt", "currency": "EUR",
            "seed_amount": 100_000, "contribution_bps": 100})
        assert status == 201, body
    latencies_ms: list[float] = []
    errors: list = []
    unanswered: list[dict] = []

    def body_of(i: int) -> dict:
        return {"contribution_id": f"c-{tag}-{int(rate)}-{i}", "brand_id": "b1", "pool_id": pool_ids[i % pools],
                "round_id": f"r-{i}", "player_id": f"p-{i % 997}", "bet": {"amount": 200, "currency": "EUR"}}

    async def one(i: int) -> None:
        started = time.perf_counter()
        status, body = await client.call("POST", "/v1/jp/contributions", body_of(i))
        latencies_ms.append((time.perf_counter() - started) * 1000)
        if status != 200:
            errors.append((status, body))
            unanswered.append(body_of(i))

    total = int(rate * seconds)
    cpu_before = stack_cpu_s(stack)
    wall = await open_loop(rate, total, one)
    cpu_after = stack_cpu_s(stack)
    print(f"contributions at {rate:.0f}/s target over {pools} pool(s): {total / wall:.0f}/s achieved, "
          f"{len(errors)} errors {errors[:2]}")
    print(latency_line("POST /v1/jp/contributions", latencies_ms))
    print(target_line(f"contribution p99 at {rate:.0f}/s", percentile(latencies_ms, 99), p99_target_ms))
    print(cpu_per_operation_line(cpu_before, cpu_after, total, "contribution"))
    # A game server retries what was not answered (a 504 may or may not have been applied)
    # with the same contribution id until it is; then every contribution counts exactly once.
    while unanswered:
        results = await asyncio.gather(*(client.call("POST", "/v1/jp/contributions", b) for b in unanswered))
        unanswered = [b for b, (status, _) in zip(unanswered, results) if status != 200]
    sizes = []
    for pool_id in pool_ids:
        status, body = await client.call("GET", f"/v1/jp/pools/{pool_id}")
        sizes.append(body["size"])
    expected = 100_000 * pools + 2 * total
    exact = sum(sizes) == expected
    print(f"{'pool sizes after retries':<30} {sum(sizes)} == {expected}   {'PASS' if exact else 'MISS'}")


async def triggers(stack, client: BankrollClient, tag: str, count: int, rate: float, p95_target_ms: float) -> None:
    players = [f"tp-{tag}-{i}" for i in range(count)]
    for start in range(0, count, 100):
        chunk = players[start:start + 100]
        await asyncio.gather(*(client.call("POST", "/v1/players", {"player_id": p, "currency": "EUR",
                                                                     "country": "MT"}) for p in chunk))
        await asyncio.gather(*(client.call("POST", "/v1/jp/pools", {
            "pool_id": f"tpool-{p}", "kind": "progressive", "brand_ids": ["b1"], "region": "mt", "currency": "EUR",
            "seed_amount": 5_000}) for p in chunk))
    settings = stack.settings
    consumer = AIOKafkaConsumer(topic_name(settings, JP_PAYOUT_CREDITED),
                                bootstrap_servers=bootstrap_servers(settings.kafka_url), group_id=None,
                                auto_offset_reset="latest", fetch_max_wait_ms=5)
    await consumer.start()
    await consumer.seek_to_end()
    sent_at: dict[str, float] = {}
    credited_ms: dict[str, float] = {}
    trigger_ms: list[float] = []

    async def listen() -> None:
        while len(credited_ms) < count:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    trigger_id = json.loads(record.value)["trigger_id"]
                    if trigger_id in sent_at and trigger_id not in credited_ms:
                        credited_ms[trigger_id] = (now - sent_at[trigger_id]) * 1000

    async def one(i: int) -> None:
        trigger_id = f"t-{tag}-{i}"
        sent_at[trigger_id] = started = time.perf_counter()
        status, body = await client.call("POST", "/v1/jp/triggers", {
            "trigger_id": trigger_id, "pool_id": f"tpool-{players[i]}", "reason": "bench",
            "selection": {"player_id": players[i], "round_id": f"r-{i}"}})
        trigger_ms.append((time.perf_counter() - started) * 1000)
        assert status == 201, body

    listener = asyncio.create_task(listen())
    await open_loop(rate, count, one)
    try:
        await asyncio.wait_for(listener, 60)
    finally:
        await consumer.stop()
    print(f"{count} triggers at {rate:.0f}/s, each a fresh pool and winner")
    print(latency_line("POST /v1/jp/triggers", trigger_ms))
    print(latency_line("trigger -> wallet credited", list(credited_ms.values())))
    print(f"{'credited':<30} {len(credited_ms)}/{count}")
    print(target_line(f"trigger -> credit p95 at {rate:.0f} triggers/s", percentile(list(credited_ms.values()), 95),
                      p95_target_ms))


async def run(stack, rates: list[float] | None, args: argparse.Namespace) -> None:
    if rates is None:
        baseline = await measure_baseline(stack, args.baseline_rounds, args.baseline_players)
        rates = [baseline / 3]
        print(f"contribution rate: baseline / 3 = {rates[0]:.0f}/s", flush=True)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = BankrollClient(stack.base_url, session=session)
        tag = str(int(time.time()))
        for rate in rates:
            await contributions(stack, client, tag, rate, args.seconds, args.pools, args.p99_target_ms)
            await asyncio.sleep(2)
        if args.triggers:
            await triggers(stack, client, tag, args.triggers, args.trigger_rate, args.credit_p95_target_ms)


def main() -> None:
    print_load_average()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default=None,
                        help="contribution requests per second, comma separated; default: the baseline's rounds/s / 3")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--triggers", type=int, default=300)
    parser.add_argument("--trigger-rate", type=float, default=20)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--p99-target-ms", type=float, default=50, help="contribution p99 target")
    parser.add_argument("--credit-p95-target-ms", type=float, default=100, help="trigger -> credit p95 target")
    add_baseline_arguments(parser)
    args = parser.parse_args()
    rates = None if args.rates is None else [float(r) for r in args.rates.split(",")]
    with running_stack(args.workers) as stack:
        asyncio.run(run(stack, rates, args))


if __name__ == "__main__":
    main()
