"""What the benchmark scripts share: a stack to run against and percentile summaries."""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Awaitable, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.stack import running  # noqa: E402


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


def cpu_per_operation_line(before: dict[str, float], after: dict[str, float], operations: int) -> str:
    parts = [f"{name} {(after[name] - before.get(name, 0.0)) * 1000 / operations:.3f}" for name in sorted(after)]
    return "CPU ms per operation: " + ", ".join(parts) + " (services given by URL are not measured)"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def latency_line(name: str, latencies_ms: list[float], extra: str = "") -> str:
    return (f"{name:<30} n {len(latencies_ms):>6}   p50 {percentile(latencies_ms, 50):6.1f} ms   "
            f"p95 {percentile(latencies_ms, 95):6.1f} ms   p99 {percentile(latencies_ms, 99):6.1f} ms   "
            f"max {max(latencies_ms):7.1f} ms{extra}")


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
