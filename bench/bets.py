"""Benchmark: bets placed and settled through HTTP at a fixed rate (open loop).

Each bet is a place followed by a settle (half win, half loss) on one of many funded
players. Requests start on a fixed schedule whatever the answers do, so a slow server
shows as latency rather than as a lower request rate.

Without --rate the plain PostgreSQL wallet (bench/baseline_sql.py) is measured first on
the same PostgreSQL, and requests start at one third of its rounds per second (a bet is
two requests, place and settle). Prints p50/p95/p99 of place and settle with the p99 target
(--p99-target-ms, 50) and PASS/MISS, the achieved request rate, the CPU milliseconds per
bet of every process, and the time from each settle's answer to its ledger row's
`recorded_at` (negative: the row was committed before the answer left).

    python -m bench.bets                  # baseline first, requests/s = baseline / 3
    python -m bench.bets --rate 500 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import asyncpg

from app.client.signed import BankrollClient
from bench.common import (Bets, add_baseline_arguments, cpu_per_operation_line, create_funded_players, latency_line,
                          measure_baseline, open_loop, percentile, print_load_average, recorded_after_answer_ms,
                          running_stack, stack_cpu_s, target_line)


async def run(stack, rate: float | None, seconds: float, players: int, p99_target_ms: float,
              baseline_rounds: int, baseline_players: int) -> None:
    if rate is None:
        baseline = await measure_baseline(stack, baseline_rounds, baseline_players)
        # The target is set in requests: one third of the baseline's rounds/s, and a bet is
        # two requests (place, settle).
        rate = baseline / 3 / 2
        print(f"request rate: baseline / 3 = {2 * rate:.0f} requests/s ({rate:.0f} bets/s)", flush=True)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = BankrollClient(stack.base_url, session=session)
        tag = str(int(time.time()))
        ids = [f"bb-{tag}-{i}" for i in range(players)]
        await create_funded_players(client, ids, 10_000_000)
        bets = Bets(client, tag, ids)
        total = int(rate * seconds)
        cpu_before = stack_cpu_s(stack)
        wall = await open_loop(rate, total, bets.one)
        cpu_after = stack_cpu_s(stack)
        print(f"{total} bets at {rate:.0f}/s target ({2 * rate:.0f} requests/s): "
              f"{(len(bets.place_ms) + len(bets.settle_ms)) / wall:.0f} requests/s achieved, "
              f"{len(bets.errors)} errors {bets.errors[:2]}")
        print(latency_line("place (POST /v1/bets/place)", bets.place_ms))
        print(latency_line("settle (POST /v1/bets/settle)", bets.settle_ms))
        print(target_line(f"place p99 at {rate:.0f} bets/s", percentile(bets.place_ms, 99), p99_target_ms))
        print(target_line(f"settle p99 at {rate:.0f} bets/s", percentile(bets.settle_ms, 99), p99_target_ms))
        print(cpu_per_operation_line(cpu_before, cpu_after, total, "bet"))

        db = await asyncpg.create_pool(stack.env["DATABASE_URL"], min_size=1, max_size=2)
        settles = {op: at for op, at in bets.answered_at.items() if op.endswith(":settle")}
        lags, missing = await recorded_after_answer_ms(db, stack.tenant_id, settles)
        await db.close()
        print(f"{'settle answer -> recorded_at':<30} rows {len(lags)}/{len(settles)}   "
              f"p50 {percentile(lags, 50):6.1f} ms   p99 {percentile(lags, 99):6.1f} ms   "
              f"({missing} answered settles without a row)")


def main() -> None:
    print_load_average()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=None,
                        help="bets per second (each is two requests); default: half of the baseline's rounds/s / 3, "
                             "so that requests/s = baseline / 3")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--players", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--p99-target-ms", type=float, default=50)
    add_baseline_arguments(parser)
    args = parser.parse_args()
    with running_stack(args.workers) as stack:
        asyncio.run(run(stack, args.rate, args.seconds, args.players, args.p99_target_ms, args.baseline_rounds,
                        args.baseline_players))


if __name__ == "__main__":
    main()
