"""Benchmark of the deposit slice, through HTTP at fixed concurrency.

For each concurrency level it measures, closed loop (each of C clients sends its next
request when the previous one is answered):
  * POST /v1/deposits              (registers the deposit: 202 PENDING)
  * POST /v1/psp/sandbox/webhooks  (credits CASH: wallet agent, table, Redis, postings)
and then, from PostgreSQL, the lag from sending the webhook to its ledger row's
`recorded_at` (same machine, same clock).

    python -m bench.deposits                      # starts its own stack (embedded unless URLs are set)
    python -m bench.deposits --requests 4000 --concurrency 50 200

It prints figures; it asserts nothing. Targets are in the issue, results in the notes."""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp
import asyncpg

from app.client.signed import BankrollClient
from bench.common import percentile, print_load_average, running_stack


def summary(name: str, latencies_s: list[float], wall_s: float, errors: int) -> str:
    ms = [v * 1000 for v in latencies_s]
    return (f"{name:<26} {len(ms) / wall_s:>9.0f} req/s   p50 {percentile(ms, 50):6.1f} ms   "
            f"p95 {percentile(ms, 95):6.1f} ms   p99 {percentile(ms, 99):6.1f} ms   "
            f"max {max(ms):7.1f} ms   errors {errors}")


async def closed_loop(concurrency: int, jobs: list, send) -> tuple[list[float], float, int]:
    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    latencies: list[float] = []
    errors = 0

    async def client_loop() -> None:
        nonlocal errors
        while not queue.empty():
            job = queue.get_nowait()
            started = time.perf_counter()
            ok = await send(job)
            latencies.append(time.perf_counter() - started)
            errors += 0 if ok else 1

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started, errors


async def run(base_url: str, database_url: str, tenant_id: str, requests: int, levels: list[int],
              players: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = BankrollClient(base_url, session=session)
        run_id = f"{int(time.time())}"
        player_ids = [f"bench-{run_id}-{i}" for i in range(players)]
        await asyncio.gather(*(client.call("POST", "/v1/players", {"player_id": p, "currency": "EUR",
                                                                    "country": "DE"}) for p in player_ids))
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
        print(f"{requests} deposits per level, {players} players, against {base_url}")
        for concurrency in levels:
            deposit_ids = [f"bd-{run_id}-{concurrency}-{i}" for i in range(requests)]

            async def register(i: int) -> bool:
                status, _ = await client.call("POST", "/v1/deposits", {
                    "deposit_id": deposit_ids[i], "player_id": player_ids[i % players], "amount": 1_000 + i,
                    "currency": "EUR", "method": "card", "idempotency_key": deposit_ids[i]})
                return status == 202

            sent_at: dict[str, float] = {}

            async def settle(i: int) -> bool:
                sent_at[f"deposit:{deposit_ids[i]}"] = time.time()
                status, _ = await client.psp_webhook("sandbox", "sandbox-secret", {
                    "event_id": f"e-{deposit_ids[i]}", "deposit_id": deposit_ids[i], "status": "SUCCEEDED",
                    "amount": 1_000 + i, "currency": "EUR", "fee": 0})
                return status == 200

            lat, wall, err = await closed_loop(concurrency, list(range(requests)), register)
            print(summary(f"deposit  c={concurrency}", lat, wall, err))
            lat, wall, err = await closed_loop(concurrency, list(range(requests)), settle)
            print(summary(f"webhook  c={concurrency}", lat, wall, err))

            deadline = time.monotonic() + 60
            while True:
                rows = await pool.fetch(
                    "SELECT operation_id, extract(epoch FROM recorded_at)::float8 AS at FROM ledger_entries "
                    "WHERE tenant_id = $1 AND operation_id = ANY($2) AND leg = 0",
                    tenant_id, list(sent_at))
                if len(rows) == len(sent_at) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            lags = [(r["at"] - sent_at[r["operation_id"]]) * 1000 for r in rows]
            print(f"{'webhook -> PostgreSQL row':<26} rows {len(rows)}/{len(sent_at)}   "
                  f"p50 {percentile(lags, 50):6.1f} ms   p95 {percentile(lags, 95):6.1f} ms   "
                  f"p99 {percentile(lags, 99):6.1f} ms   mean {statistics.fmean(lags):6.1f} ms")
        await pool.close()


def main() -> None:
    print_load_average()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="deposits per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--players", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    with running_stack(args.workers) as stack:
        asyncio.run(run(stack.base_url, stack.env["DATABASE_URL"], stack.tenant_id, args.requests,
                        args.concurrency, args.players))

if __name__ == "__main__":
    main()
