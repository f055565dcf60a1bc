"""What the benchmark scripts share: a stack to run against, the SQL baseline measured on
its PostgreSQL, load shapes (open and closed loop), bets through HTTP, percentile summaries,
CPU from /proc, the partitions the workers announce and the target lines (PASS/MISS)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis  # noqa: E402

from bench import baseline_sql  # noqa: E402
from storage.redis.stores import worker_key_prefix  # noqa: E402
from tests.stack import running  # noqa: E402

# The plain PostgreSQL wallet's load when a script is not told otherwise.
BASELINE_ROUNDS, BASELINE_PLAYERS = 20_000, 2_000


def print_load_average() -> None:
    """Every script starts with it: the machine is shared, and the figures mean little
    without it."""
    with open("/proc/loadavg") as load:
        print(f"machine load average: {load.read().split()[:3]}", flush=True)


def target_line(name: str, measured: float, target: float, unit: str = "ms") -> str:
    """A measured figure beside its target (at most `target`), with the word a note can quote."""
    return (f"{name:<44} {measured:9.2f} {unit}   target <= {target:g} {unit}   "
            f"{'PASS' if measured <= target else 'MISS'}")


def add_baseline_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline-rounds", type=int, default=None,
                        help=f"rounds of the plain PostgreSQL wallet (default {BASELINE_ROUNDS}; "
                             "bench.rounds: its --rounds)")
    parser.add_argument("--baseline-players", type=int, default=None,
                        help=f"its players (default {BASELINE_PLAYERS}; bench.rounds: its --players)")


async def measure_baseline(stack, rounds: int | None, players: int | None) -> float:
    """Rounds a second of the plain PostgreSQL wallet (bench/baseline_sql.py) on the
    stack's PostgreSQL, printed."""
    rounds, players = rounds or BASELINE_ROUNDS, players or BASELINE_PLAYERS
    rate = await baseline_sql.run(stack.env["DATABASE_URL"], rounds, players)
    print(f"plain PostgreSQL wallet (one transaction per round, 20 connections, {rounds} rounds over "
          f"{players} players): {rate:.0f} rounds/s", flush=True)
    return rate


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of a process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and every process below it (PostgreSQL's backends)."""
    stats = {int(e): _stat(int(e)) for e in os.listdir("/proc") if e.isdigit()}
    children: dict[int, list[int]] = {}
    for child, stat in stats.items():
        if stat is not None:
            children.setdefault(stat[0], []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        stat = stats.get(current)
        if stat is not None:
            total += stat[1]
        todo.extend(children.get(current, []))
    return total


def stack_cpu_s(stack) -> dict[str, float]:
    """CPU seconds so far of each process of the stack that runs on this machine."""
    out = {f"worker {name}": tree_cpu_s(p.pid) for name, p in stack.workers.items()}
    if stack.web is not None:
        out["web"] = tree_cpu_s(stack.web.pid)
    for name, proc in stack.services.items():
        out[name] = tree_cpu_s(proc.pid)
    return out


def cpu_per_operation_line(before: dict[str, float], after: dict[str, float], operations: int,
                           operation: str = "operation") -> str:
    parts = [f"{name} {(after[name] - before.get(name, 0.0)) * 1000 / operations:.3f}" for name in sorted(after)]
    return f"CPU ms per {operation}: " + ", ".join(parts) + " (services given by URL are not measured)"


def worker_cpu_ms(before: dict[str, float], after: dict[str, float], operations: int) -> float:
    """CPU milliseconds per operation of all the workers together."""
    return sum(after[name] - before.get(name, 0.0) for name in after if name.startswith("worker ")) * 1000 / operations


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN of nothing (a figure that failed shows as nan, and MISS)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency_line(name: str, latencies_ms: list[float], extra: str = "") -> str:
    return (f"{name:<30} n {len(latencies_ms):>6}   p50 {percentile(latencies_ms, 50):6.1f} ms   "
            f"p95 {percentile(latencies_ms, 95):6.1f} ms   p99 {percentile(latencies_ms, 99):6.1f} ms   "
            f"max {percentile(latencies_ms, 100):7.1f} ms{extra}")


async def open_loop(rate: float, total: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Start one(i) for i in range(total) on a fixed schedule of `rate` a second, whatever
    the answers do (a slow server shows as latency, not as a lower rate); wait for all of
    them and return the wall time in seconds."""
    tasks = []
    began = time.perf_counter()
    for i in range(total):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - began


async def closed_loop(concurrency: int, seconds: float, one: Callable[[int], Awaitable[None]]) -> float:
    """CONCURRENCY clients, each starting one(i) (i counting up across all of them) as soon
    as its previous one is done, until SECONDS have passed; returns the wall time once the
    last one is done. What the stack does at most with that many requests in flight."""
    counter = iter(range(10**12))
    began = time.perf_counter()
    deadline = began + seconds

    async def client() -> None:
        while time.perf_counter() < deadline:
            await one(next(counter))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return time.perf_counter() - began


class Bets:
    """Bets through HTTP: each one a place then a settle (even ones win 180, odd ones lose)
    on one of PLAYERS funded players. Keeps each request's latency, and for each operation
    answered 2xx the wall-clock second it was answered (`answered_at`, by the ledger's
    operation id), also handed to `on_answer`."""

    def __init__(self, client, tag: str, players: list[str],
                 on_answer: Callable[[str, float], None] | None = None) -> None:
        self.client, self.tag, self.players, self.on_answer = client, tag, players, on_answer
        self.place_ms: list[float] = []
        self.settle_ms: list[float] = []
        self.errors: list = []
        self.answered_at: dict[str, float] = {}
        self.settled = 0

    def _answered(self, operation_id: str) -> None:
        now = time.time()
        self.answered_at[operation_id] = now
        if self.on_answer is not None:
            self.on_answer(operation_id, now)

    async def one(self, i: int) -> None:
        bet_id = f"bet-{self.tag}-{i}"
        started = time.perf_counter()
        status, body = await self.client.call("POST", "/v1/bets/place", {
            "bet_id": bet_id, "player_id": self.players[i % len(self.players)], "amount": 100, "currency": "EUR"})
        self.place_ms.append((time.perf_counter() - started) * 1000)
        if status != 201:
            self.errors.append(("place", status, body))
            return
        self._answered(f"bet:{bet_id}:place")
        win = i % 2 == 0
        started = time.perf_counter()
        status, body = await self.client.call("POST", "/v1/bets/settle", {
            "bet_id": bet_id, "result": "WIN" if win else "LOSS", "payout": 180 if win else 0})
        self.settle_ms.append((time.perf_counter() - started) * 1000)
        if status != 200:
            self.errors.append(("settle", status, body))
            return
        self._answered(f"bet:{bet_id}:settle")
        self.settled += 1


async def recorded_after_answer_ms(db, tenant_id: str, answered_at: dict[str, float],
                                   timeout_s: float = 60) -> tuple[list[float], int]:
    """For each answered operation, its first ledger row's `recorded_at` (the committing
    transaction's start, PostgreSQL's clock, the same machine) minus the second it was
    answered, in ms: negative when the row was written before the answer left. Waits up
    to TIMEOUT_S for the rows; returns the lags and how many operations have no row."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await db.fetch(
            "SELECT operation_id, extract(epoch FROM recorded_at)::float8 AS at FROM ledger_entries "
            "WHERE tenant_id = $1 AND operation_id = ANY($2::text[]) AND leg = 0", tenant_id, list(answered_at))
        if len(rows) == len(answered_at) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    return [(r["at"] - answered_at[r["operation_id"]]) * 1000 for r in rows], len(answered_at) - len(rows)


async def announced_partitions(stack) -> dict[str, list[int]]:
    """worker id -> the partitions it announces in Redis (its heartbeat) as served."""
    client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    out: dict[str, list[int]] = {}
    try:
        async for key in client.scan_iter(match=worker_key_prefix(stack.settings.faust_app_id) + "*"):
            raw = await client.get(key)
            if raw:
                info = json.loads(raw)
                out[info["worker_id"]] = sorted(info["partitions"])
    finally:
        await client.aclose()
    return out


def partitions_split(stack, announced: dict[str, list[int]]) -> bool:
    """Every worker of the stack serves some partitions, no partition twice, none left out."""
    serving = [parts for parts in announced.values() if parts]
    owned = [p for parts in serving for p in parts]
    return (len(serving) == len(stack.workers) and len(owned) == len(set(owned))
            and set(owned) == set(range(stack.settings.topic_partitions)))


async def wait_partitions_split(stack, timeout_s: float = 120) -> dict[str, list[int]]:
    """The announcements once the workers have split the partitions (a second worker joins
    the group after the first took them all, so the stack can be ready before the split)."""
    deadline = time.monotonic() + timeout_s
    while True:
        announced = await announced_partitions(stack)
        if partitions_split(stack, announced):
            return announced
        if time.monotonic() > deadline:
            raise TimeoutError(f"the {len(stack.workers)} workers did not split the partitions: {announced}")
        await asyncio.sleep(0.5)


async def create_funded_players(client, ids: list[str], amount_minor: int) -> None:
    """Players with CASH, credited by adjustment (no PSP round trip), 100 at a time."""
    for start in range(0, len(ids), 100):
        chunk = ids[start:start + 100]
        await asyncio.gather(*(client.call("POST", "/v1/players", {"player_id": p, "currency": "EUR",
                                                                     "country": "DE"}) for p in chunk))
        await asyncio.gather(*(client.call("POST", "/v1/adjustments", {
            "adjustment_id": f"fund-{p}", "player_id": p, "wallet": "CASH", "currency": "EUR",
            "amount": amount_minor, "reason": "benchmark funding"}) for p in chunk))


@contextmanager
def running_stack(workers: int = 1, **env: str):
    """Bankroll on the embedded stack (or the services whose URLs are set)."""
    settings = {"REPLY_TIMEOUT_MS": "10000", "BET_HOLD_TTL_S": "120", "MAX_DEPOSITS_PER_HOUR": "1000000", **env}
    with running(Path(tempfile.mkdtemp(prefix="bankroll-bench-")), workers=workers, **settings) as stack:
        yield stack
