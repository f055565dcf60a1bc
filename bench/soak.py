"""Benchmark: `make run` left running with its own demo traffic (issue 8).

Starts the README's run command (`python -m app.run --demo`, on free ports and a fresh run
directory) and, once a minute, prints the RSS of every process it started and the latency
of a fresh player's creation and a credit adjustment through the HTTP API. The target is
flat: the same figures at minute 30 as at minute 1.

    python -m bench.soak --minutes 30
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp

from app.client.signed import BankrollClient
from app.run import rss_mb
from config.settings import REPO_ROOT, SETTINGS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_of(run_dir: str) -> dict[int, str]:
    """pid -> short name of every process whose environment names the run directory."""
    out = {}
    marker = f"BANKROLL_RUN_DIR={run_dir}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as env:
                if marker not in env.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmd:
                argv = cmd.read().split(b"\0")
        except OSError:
            continue
        text = b" ".join(argv).decode(errors="replace")
        for name in ("app.run", "agents.worker", "app.api.server", "app.demo"):
            if name in text:
                out[int(entry)] = name.split(".")[-1]
                break
        else:
            for name in ("tansu", "postgres", "redis-server"):
                if name in text and int(entry) not in out:
                    out[int(entry)] = name
    return out


def memory_by_kind(run_dir: str) -> dict[str, float]:
    totals: dict[str, float] = {}
    for pid, name in processes_of(run_dir).items():
        totals[name] = totals.get(name, 0.0) + rss_mb(pid)
    return totals


async def probe(base_url: str) -> tuple[float, float]:
    """Milliseconds of a fresh player's creation and of a credit adjustment."""
    player = f"soak-{uuid.uuid4().hex[:10]}"
    async with BankrollClient(base_url) as client:
        began = time.perf_counter()
        status, body = await client.call("POST", "/v1/players", {"player_id": player, "currency": "EUR",
                                                                  "country": "DE"})
        created = (time.perf_counter() - began) * 1000
        if status != 201:
            return float("nan"), float("nan")
        began = time.perf_counter()
        status, body = await client.call("POST", "/v1/adjustments", {
            "adjustment_id": f"a-{player}", "player_id": player, "wallet": "CASH", "currency": "EUR", "amount": 500,
            "reason": "soak probe"})
        adjusted = (time.perf_counter() - began) * 1000
        return created, adjusted if status == 201 else float("nan")


def wait_ready(base_url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base_url + "/ready", timeout=3) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("make run did not get ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], metavar="SETTING=VALUE",
                        help="a Bankroll setting for the run, e.g. EMBEDDED_BROKER_MAX_MB=128 (repeatable)")
    args = parser.parse_args()
    run_dir = tempfile.mkdtemp(prefix="bankroll-soak-")
    env = {k: v for k, v in os.environ.items() if k not in {s.env for s in SETTINGS}}
    http_port = free_port()
    env.update(BANKROLL_RUN_DIR=run_dir, HTTP_PORT=str(http_port), EMBEDDED_KAFKA_PORT=str(free_port()),
               EMBEDDED_POSTGRES_PORT=str(free_port()), EMBEDDED_REDIS_PORT=str(free_port()))
    env.update(item.split("=", 1) for item in args.set)
    base_url = f"http://127.0.0.1:{http_port}"
    log = open(Path(run_dir) / "make-run.log", "wb")
    run = subprocess.Popen([sys.executable, "-m", "app.run", "--demo"], cwd=REPO_ROOT, env=env, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_ready(base_url)
        with open("/proc/loadavg") as load:
            print(f"machine load average: {load.read().split()[:3]}; log: {run_dir}/make-run.log", flush=True)
        rows = []
        started = time.monotonic()
        for minute in range(1, args.minutes + 1):
            time.sleep(max(0.0, started + minute * 60 - time.monotonic()))
            try:
                created_ms, adjusted_ms = asyncio.run(probe(base_url))
            except (OSError, aiohttp.ClientError) as exc:  # the web restarting above a replaced broker
                print(f"minute {minute:>3}: refused ({exc!r})", flush=True)
                created_ms = adjusted_ms = float("nan")
            memory = memory_by_kind(run_dir)
            rows.append((minute, created_ms, adjusted_ms, memory))
            print(f"minute {minute:>3}: create {created_ms:7.1f} ms, adjust {adjusted_ms:7.1f} ms; RSS MB "
                  + ", ".join(f"{k} {v:.0f}" for k, v in sorted(memory.items())), flush=True)
        first, last = rows[0], rows[-1]
        print(f"minute 1 -> {last[0]}: create {first[1]:.1f} -> {last[1]:.1f} ms, adjust {first[2]:.1f} -> "
              f"{last[2]:.1f} ms; RSS " + ", ".join(
                  f"{k} {first[3].get(k, 0):.0f} -> {last[3].get(k, 0):.0f} MB" for k in sorted(last[3])))
    finally:
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
