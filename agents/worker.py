"""Entry point of a Faust worker: `python -m agents.worker`.

Builds the Faust app from the settings, has each agent module register its agent, its
table's restore and its timer on what the agents share (agents/runtime.py), and runs it.
Several workers with the same FAUST_APP_ID form one consumer group and split the
partitions."""
from __future__ import annotations

import os
import socket
import sys

from prometheus_client import start_http_server

from agents import jackpot, ledger_flush, wallet
from agents.runtime import Worker, WorkerResources, register_heartbeat
from app.streaming import BankrollApp, create_streams
from config import Settings, load_settings


def build_worker(
    settings: Settings,
    worker_id: str | None = None,
    resources: WorkerResources | None = None,
    metrics_url: str = "",
) -> BankrollApp:
    # Faust creates its datadir without parents; the run dir exists only when an embedded
    # service made it.
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    worker = Worker(settings, create_streams(settings), resources or WorkerResources(settings),
                    worker_id or f"{socket.gethostname()}-{os.getpid()}", metrics_url)
    wallet.register(worker)
    jackpot.register(worker)
    ledger_flush.register(worker)
    register_heartbeat(worker)
    return worker.app


def main() -> None:
    settings = load_settings()
    server, _ = start_http_server(settings.worker_metrics_port, addr=settings.http_host)
    metrics_url = f"http://{settings.http_host}:{server.server_port}/metrics"
    app = build_worker(settings, metrics_url=metrics_url)
    faust_level = {"warning": "warn"}.get(settings.log_level, settings.log_level)
    # Faust's own web server is not used: Bankroll's HTTP API is a separate process.
    sys.argv = [sys.argv[0], "worker", "--loglevel", faust_level, "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
