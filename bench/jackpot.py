"""Benchmark: jackpot contributions through HTTP at fixed rates (open loop), and the time
from a trigger to the wallet's credit of the winner.

Contributions go to --pools progressive pools (one pool is one key, so one actor takes all
of its contributions in order; several pools spread over partitions). Requests start on
a fixed schedule whatever the answers do, so a slow server shows as latency. Then
--triggers manual triggers, each for a fresh pool and player, are sent at --trigger-rate
per second; the time from sending a trigger to seeing its `jp.payout.credited` event
(emitted once the wallet agent has credited the winner) is the trigger -> credit latency.

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
from app.streaming import JP_PAYOUT_CREDITED, topic_name
from bench.common import latency_line, open_loop, percentile, running_stack


async def contributions(client: BankrollClient, tag: str, rate: float, seconds: float, pools: int) -> None:
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
    wall = await open_loop(rate, total, one)
    print(f"contributions at {rate:.0f}/s target over {pools} pool(s): {total / wall:.0f}/s achieved, "
          f"{len(errors)} errors {errors[:2]}")
    print(latency_line("POST /v1/jp/contributions", latencies_ms))
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
    print(f"{'pool sizes after retries':<30} {sum(sizes)} == {expected}: {sum(sizes) == expected}")


async def triggers(stack, client: BankrollClient, tag: str, count: int, rate: float) -> None:
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
    print(f"{'credited':<30} {len(credited_ms)}/{count}; p95 target 100 ms: "
          f"{'met' if percentile(list(credited_ms.values()), 95) <= 100 else 'NOT met'}")


async def run(stack, rates: list[float], seconds: float, pools: int, trigger_count: int,
              trigger_rate: float) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = BankrollClient(stack.base_url, session=session)
        tag = str(int(time.time()))
        for rate in rates:
            await contributions(client, tag, rate, seconds, pools)
            await asyncio.sleep(2)
        if trigger_count:
            await triggers(stack, client, tag, trigger_count, trigger_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="100,250,500", help="contribution requests per second, comma separated")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--pools", type=int, default=4)
    parser.add_argument("--triggers", type=int, default=300)
    parser.add_argument("--trigger-rate", type=float, default=20)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with running_stack(args.workers) as stack:
        asyncio.run(run(stack, [float(r) for r in args.rates.split(",")], args.seconds, args.pools, args.triggers,
                        args.trigger_rate))


if __name__ == "__main__":
    main()
