"""Benchmark: bets placed and settled through HTTP at a fixed rate (open loop).

Each bet is a place followed by a settle (half win, half loss) on one of many funded
players. Requests start on a fixed schedule whatever the answers do, so a slow server
shows as latency rather than as a lower request rate. Prints p50/p95/p99 of place and
settle, the achieved request rate and the lag from settle to its ledger row.

    python bench/bets.py --rate 500 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import asyncpg

from bench.common import create_funded_players, latency_line, open_loop, percentile, running_stack
from app.client.signed import BankrollClient


async def run(stack, rate: float, seconds: float, players: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = BankrollClient(stack.base_url, session=session)
        tag = str(int(time.time()))
        ids = [f"bb-{tag}-{i}" for i in range(players)]
        await create_funded_players(client, ids, 10_000_000)
        place_ms, settle_ms, errors, settled_at = [], [], [], {}

        async def one_bet(i: int) -> None:
            bet_id = f"bet-{tag}-{i}"
            started = time.perf_counter()
            status, body = await client.call("POST", "/v1/bets/place", {
                "bet_id": bet_id, "player_id": ids[i % players], "amount": 100, "currency": "EUR"})
            place_ms.append((time.perf_counter() - started) * 1000)
            if status != 201:
                errors.append(("place", status, body))
                return
            win = i % 2 == 0
            started = time.perf_counter()
            settled_at[f"bet:{bet_id}:settle"] = time.time()
            status, body = await client.call("POST", "/v1/bets/settle", {
                "bet_id": bet_id, "result": "WIN" if win else "LOSS", "payout": 180 if win else 0})
            settle_ms.append((time.perf_counter() - started) * 1000)
            if status != 200:
                errors.append(("settle", status, body))

        total = int(rate * seconds)
        wall = await open_loop(rate, total, one_bet)
        print(f"{total} bets at {rate:.0f}/s target ({2 * rate:.0f} requests/s): "
              f"{2 * total / wall:.0f} requests/s achieved, {len(errors)} errors {errors[:2]}")
        print(latency_line("place (POST /v1/bets/place)", place_ms))
        print(latency_line("settle (POST /v1/bets/settle)", settle_ms))

        pool = await asyncpg.create_pool(stack.env["DATABASE_URL"], min_size=1, max_size=2)
        deadline = time.monotonic() + 60
        while True:
            rows = await pool.fetch(
                "SELECT operation_id, extract(epoch FROM recorded_at)::float8 AS at FROM ledger_entries "
                "WHERE tenant_id = $1 AND operation_id = ANY($2) AND leg = 0", stack.tenant_id, list(settled_at))
            if len(rows) == len(settled_at) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        lags = [(r["at"] - settled_at[r["operation_id"]]) * 1000 for r in rows]
        print(f"{'settle -> PostgreSQL row':<30} rows {len(rows)}/{len(settled_at)}   "
              f"p50 {percentile(lags, 50):6.1f} ms   p99 {percentile(lags, 99):6.1f} ms")
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=250, help="bets per second (each is two requests)")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--players", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with running_stack(args.workers) as stack:
        asyncio.run(run(stack, args.rate, args.seconds, args.players))


if __name__ == "__main__":
    main()
