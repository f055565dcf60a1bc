"""Runs Bankroll for the integration and end-to-end tests.

Each service whose URL is set (KAFKA_URL, DATABASE_URL, REDIS_URL) is used as it is,
with a fresh database, tenant, Faust app id and topic prefix per run so earlier runs
cannot leak in; each one that is not set is started embedded on a free port, exactly
as `make run` starts it: the processes get its EMBEDDED_*_PORT and no URL, and with the
embedded broker no JACKPOT_SEED_SECRET either, so they run as `make run` configures them."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from config import Settings
from config.settings import REPO_ROOT, process_environment


def _wait_until_free(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.2)
    raise TimeoutError(f"port {port} still taken after {timeout_s} s")


@contextmanager
def running(workdir: Path, *, workers: int = 1, **env: str) -> Iterator["Stack"]:
    """Broker, PostgreSQL and Redis (embedded unless their URL is set), the workers and the
    web, ready; all stopped on the way out. `env` sets settings of the run."""
    stack = Stack(workdir)
    stack.env.update(env)
    try:
        stack.start_services()
        for i in range(workers):
            stack.start_worker(f"worker-{i + 1}")
        stack.start_web()
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def _stop_draining(proc: subprocess.Popen, timeout_s: float = 40) -> None:
    """SIGTERM, so the process drains; SIGKILL if it has not ended within timeout_s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout_s} s")


SERVICE_URLS = {"KAFKA_URL": "kafka_url", "DATABASE_URL": "database_url", "REDIS_URL": "redis_url"}


class StackEnvironment(dict):
    """The environment the stack's processes start with. An embedded service has no URL
    in it (its clients derive the address from its port, as under `make run`), yet
    reading the URL still answers the derived one, so a test connects to every service
    alike: ``stack.env["DATABASE_URL"]``."""

    def __missing__(self, key: str) -> str:
        if key in SERVICE_URLS:
            return getattr(Settings.from_env(self), SERVICE_URLS[key])
        raise KeyError(key)


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.run_id = uuid.uuid4().hex[:10]
        self.tenant_id = f"t{self.run_id}"
        self.services: dict[str, subprocess.Popen] = {}
        self.workers: dict[str, subprocess.Popen] = {}
        self.web: subprocess.Popen | None = None
        # A real broker refuses the public local jackpot seed secret: the run has its own.
        seed_secret = f"test-seed-secret-{uuid.uuid4().hex}"
        base = Settings.from_env({**os.environ, "JACKPOT_SEED_SECRET": seed_secret})
        self.env = StackEnvironment(process_environment(base))
        self.env.update({
            "BANKROLL_RUN_DIR": str(workdir / "run"),
            "FAUST_APP_ID": f"bankroll-{self.run_id}",
            "TOPIC_PREFIX": f"test-{self.run_id}." if not base.kafka_embedded else "",
            "TOPIC_PARTITIONS": "4",
            "API_KEYS": f"dev:dev-secret:{self.tenant_id},other:other-secret:other-{self.run_id}",
            "PSP_SECRETS": f"sandbox:sandbox-secret:{self.tenant_id}",
            "HTTP_PORT": str(free_port()),
            "LOG_LEVEL": "warning",
            # Short enough for the expiry test to watch a hold expire, long enough for
            # every other test to settle its bets.
            "BET_HOLD_TTL_S": "8",
            "BLOCKED_PAYOUT_DESTINATIONS": "IBAN-BLOCKED",
            "PYTHONUNBUFFERED": "1",
        })
        if not base.kafka_embedded:
            self.env["JACKPOT_SEED_SECRET"] = seed_secret
        self._base = base
        self._service_ports: dict[str, int] = {}

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.env['HTTP_PORT']}"

    # ------------------------------------------------------------ services

    def start_services(self) -> None:
        if self._base.kafka_embedded:
            self._spawn_service("broker", "EMBEDDED_KAFKA_PORT")
        if self._base.redis_embedded:
            self._spawn_service("redis", "EMBEDDED_REDIS_PORT")
        if self._base.postgres_embedded:
            self._spawn_service("postgres", "EMBEDDED_POSTGRES_PORT")
            asyncio.run(self._wait_for_postgres(self.settings.database_url))
        else:
            self.env["DATABASE_URL"] = asyncio.run(self._create_database(self._base.database_url))

    def _spawn_service(self, name: str, port_env: str) -> None:
        port = free_port()
        self.env[port_env] = str(port)
        self._service_ports[name] = port
        self._launch_service(name, port)

    def _launch_service(self, name: str, port: int) -> None:
        log = open(self.workdir / f"{name}.log", "ab")
        self.services[name] = subprocess.Popen(
            [sys.executable, "-m", "app.embedded", name], cwd=REPO_ROOT, env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(port)

    @staticmethod
    async def _wait_for_postgres(dsn: str) -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = await asyncpg.connect(dsn)
                await conn.close()
                return
            except (OSError, asyncpg.PostgresError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    async def _create_database(self, dsn: str) -> str:
        name = f"bankroll_test_{self.run_id}"
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        parts = urlsplit(dsn)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))

    # ------------------------------------------------------------ bankroll processes

    def start_worker(self, name: str = "worker-1", **env: str) -> subprocess.Popen:
        """A worker; `env` gives it settings of its own, the stack's other processes keep theirs."""
        log = open(self.workdir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "agents.worker"], cwd=REPO_ROOT, env={**self.env, **env}, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.workers[name] = proc
        return proc

    def kill_worker(self, name: str) -> None:
        proc = self.workers.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def start_web(self) -> None:
        log = open(self.workdir / "web.log", "ab")
        self.web = subprocess.Popen(
            [sys.executable, "-m", "app.api.server"], cwd=REPO_ROOT, env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def ready(self) -> dict:
        try:
            with urllib.request.urlopen(self.base_url + "/ready", timeout=3) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read())
        except OSError:
            return {"ready": False}

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.ready().get("ready"):
                return
            for name, proc in self.workers.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited: {self.log_tail(name)}")
            time.sleep(0.3)
        raise TimeoutError(f"Bankroll not ready after {timeout_s} s: {self.ready()}\n{self.log_tail('web')}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ------------------------------------------------------------ restarts

    def kill_service(self, name: str) -> None:
        """kill -9 of an embedded service (the broker loses everything it held)."""
        proc = self.services.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def restart_service(self, name: str) -> None:
        """Start an embedded service again on its port, stopping it first if it runs."""
        proc = self.services.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        port = self._service_ports[name]
        _wait_until_free(port)
        self._launch_service(name, port)
        if name == "postgres":
            asyncio.run(self._wait_for_postgres(self.settings.database_url))

    def stop_bankroll(self) -> None:
        """Stop the web, then the workers, as `make run` does: each drains first."""
        if self.web:
            _stop_draining(self.web)
        self.web = None
        self.stop_workers()

    def stop_workers(self) -> None:
        """Every worker stopped as a stop is meant to go: it drains and leaves the group at once."""
        for proc in self.workers.values():
            _stop_draining(proc)
        self.workers.clear()

    def restart(self, *, broker: str = "stop") -> None:
        """The whole stack again: Bankroll's processes stopped in order, the embedded
        broker stopped (or, with broker="kill", killed -9) and started empty, Redis started
        empty, PostgreSQL kept; then a worker and the web, until ready."""
        if broker == "kill" and "broker" in self.services:
            self.kill_service("broker")
        self.stop_bankroll()
        for name in ("broker", "redis"):
            if name in self._service_ports:
                self.restart_service(name)
        self.start_worker("worker-1")
        self.start_web()
        self.wait_ready()

    def stop(self) -> None:
        procs = list(self.workers.values()) + ([self.web] if self.web else []) + list(self.services.values())
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
