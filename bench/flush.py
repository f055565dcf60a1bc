"""Benchmark: flush lag, from an operation's HTTP answer to its row in the PostgreSQL
ledger, at 80 % of the maximum rate.

1. The plain PostgreSQL wallet (bench/baseline_sql.py) on the run's PostgreSQL.
2. The maximum: bets (a place then a settle) through HTTP in a closed loop,
   --probe-concurrency clients for --probe-seconds: settled bets per second, and that
   over the baseline. --max-rate gives it instead (e.g. bench.rounds' figure).
3. An open loop at --fraction (0.8) of the maximum for --seconds. Every place and settle
   answered 2xx is looked for in `ledger_entries` (its leg 0, by operation id) every
   --poll-ms until it is visible: answer -> visible, p50/p95/p99, and the p99 beside
   --target-ms with PASS/MISS. A row is seen at most one poll and one query after it is
   committed (the resolution, printed), so the figure is an upper bound. The row's
   `recorded_at` (the start of the transaction that wrote it) minus the answer is printed
   too: negative when the row was committed before the answer left.
Also the latencies of place and settle and the CPU milliseconds per bet of every process
during the open loop.

    python -m bench.flush
    python -m bench.flush --max-rate 400 --seconds 20
"""
from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import asyncpg

from app.client.signed import BankrollClient
from bench.common import (Bets, add_baseline_arguments, closed_loop, cpu_per_operation_line, create_funded_players,
                          latency_line, measure_baseline, open_loop, percentile, print_load_average,
                          recorded_after_answer_ms, running_stack, stack_cpu_s, target_line)


class Visibility:
    """Answered operations, polled in PostgreSQL until their ledger row is visible."""

    def __init__(self, db: asyncpg.Pool, tenant_id: str, poll_s: float) -> None:
        self.db, self.tenant_id, self.poll_s = db, tenant_id, poll_s
        self.pending: dict[str, float] = {}
        self.lags_ms: list[float] = []
        self.query_ms: list[float] = []

    def answered(self, operation_id: str, at: float) -> None:
        self.pending[operation_id] = at

    async def watch(self, stop: asyncio.Event, give_up_s: float = 60) -> None:
        """Polls until `stop` is set and nothing is pending, or GIVE_UP_S after `stop`."""
        stopped_at = None
        while True:
            if self.pending:
                ids = list(self.pending)
                started = time.perf_counter()
                rows = await self.db.fetch(
                    "SELECT operation_id FROM ledger_entries WHERE tenant_id = $1 AND operation_id = ANY($2::text[]) "
                    "AND leg = 0", self.tenant_id, ids)
                seen_at = time.time()
                self.query_ms.append((time.perf_counter() - started) * 1000)
                for row in rows:
                    self.lags_ms.append((seen_at - self.pending.pop(row["operation_id"])) * 1000)
            if stop.is_set():
                stopped_at = stopped_at or time.monotonic()
                if not self.pending or time.monotonic() - stopped_at > give_up_s:
                    return
            await asyncio.sleep(self.poll_s)


async def run(stack, args: argparse.Namespace) -> None:
    baseline = await measure_baseline(stack, args.baseline_rounds, args.baseline_players)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        client = BankrollClient(stack.base_url, session=session)
        tag = str(int(time.time()))
        ids = [f"fp-{tag}-{i}" for i in range(args.players)]
        await create_funded_players(client, ids, 100_000_000)

        max_rate = args.max_rate
        if max_rate is None:
            probe = Bets(client, f"{tag}-max", ids)
            wall = await closed_loop(args.probe_concurrency, args.probe_seconds, probe.one)
            max_rate = probe.settled / wall
            print(f"maximum: {max_rate:.0f} settled bets/s ({probe.settled} bets, closed loop, "
                  f"{args.probe_concurrency} clients, {wall:.1f} s, {len(probe.errors)} errors {probe.errors[:2]}); "
                  f"over the baseline {max_rate / baseline:.2f}", flush=True)
            print(latency_line("place at the maximum", probe.place_ms))
            print(latency_line("settle at the maximum", probe.settle_ms))
            await asyncio.sleep(2)
        else:
            print(f"maximum given: {max_rate:.0f} bets/s; over the baseline {max_rate / baseline:.2f}")

        rate = args.fraction * max_rate
        db = await asyncpg.create_pool(stack.env["DATABASE_URL"], min_size=1, max_size=2)
        visibility = Visibility(db, stack.tenant_id, args.poll_ms / 1000)
        bets = Bets(client, tag, ids, on_answer=visibility.answered)
        stop = asyncio.Event()
        watcher = asyncio.create_task(visibility.watch(stop))
        total = int(rate * args.seconds)
        cpu_before = stack_cpu_s(stack)
        wall = await open_loop(rate, total, bets.one)
        cpu_after = stack_cpu_s(stack)
        stop.set()
        await watcher
        answered = len(bets.answered_at)
        print(f"{total} bets at {rate:.0f}/s ({args.fraction:.0%} of the maximum; {2 * rate:.0f} requests/s): "
              f"{(len(bets.place_ms) + len(bets.settle_ms)) / wall:.0f} requests/s achieved, "
              f"{len(bets.errors)} errors {bets.errors[:2]}")
        print(latency_line("place (POST /v1/bets/place)", bets.place_ms))
        print(latency_line("settle (POST /v1/bets/settle)", bets.settle_ms))
        print(cpu_per_operation_line(cpu_before, cpu_after, total, "bet"))
        print(latency_line("answer -> visible in ledger", visibility.lags_ms,
                           f"   ({len(visibility.lags_ms)}/{answered} seen; polled every {args.poll_ms:g} ms, "
                           f"query p50 {percentile(visibility.query_ms, 50):.1f} ms)"))
        print(target_line(f"flush lag p99 at {rate:.0f} bets/s", percentile(visibility.lags_ms, 99)
                          if not visibility.pending else float("nan"), args.target_ms))
        lags, missing = await recorded_after_answer_ms(db, stack.tenant_id, bets.answered_at)
        await db.close()
        before = sum(1 for lag in lags if lag <= 0)
        print(f"{'answer -> recorded_at':<30} rows {len(lags)}/{answered}   p50 {percentile(lags, 50):6.1f} ms   "
              f"p99 {percentile(lags, 99):6.1f} ms   max {percentile(lags, 100):6.1f} ms   "
              f"({before} written before their answer, {missing} answered without a row)")


def main() -> None:
    print_load_average()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-rate", type=float, default=None, help="bets/s; default: measured by the closed loop")
    parser.add_argument("--probe-seconds", type=float, default=10)
    parser.add_argument("--probe-concurrency", type=int, default=64)
    parser.add_argument("--fraction", type=float, default=0.8, help="of the maximum rate, for the open loop")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--players", type=int, default=1000)
    parser.add_argument("--poll-ms", type=float, default=10)
    parser.add_argument("--target-ms", type=float, default=250, help="flush lag p99 target (issue 9: 250 ms)")
    parser.add_argument("--workers", type=int, default=1)
    add_baseline_arguments(parser)
    args = parser.parse_args()
    with running_stack(args.workers) as stack:
        asyncio.run(run(stack, args))


if __name__ == "__main__":
    main()
