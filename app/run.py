"""`make run`: the whole system from the Procfile, on the embedded stack by default.

The embedded broker, PostgreSQL and Redis entries are skipped when their URL is set.
Processes start in dependency order: the embedded services (and wait until their ports
accept connections), then the workers, then the web, then the demo traffic. Ctrl-C,
SIGTERM, or a process exiting by itself stops them in the reverse order, one stage at a
time: SIGTERM to each process group, SIGKILL to what is left after the stage's grace
period. So the web finishes its requests and the workers commit what they took while
the broker, PostgreSQL and Redis are still there."""
from __future__ import annotations

import asyncio
import errno
import os
import shlex
import signal
import socket
import sys
import time
from dataclasses import dataclass

from honcho.environ import parse_procfile

from config import Settings, SettingsError, load_settings
from config.settings import REPO_ROOT, process_environment

EMBEDDED = {"broker": "kafka_embedded", "postgres": "postgres_embedded", "redis": "redis_embedded"}


DEMO = ("demo", "python -m app.demo")

SERVICE_START_TIMEOUT_S = 60.0
OUTPUT_DRAIN_TIMEOUT_S = 2.0
BROKER_CHECK_INTERVAL_S = 10.0


@dataclass(frozen=True)
class Stage:
    processes: frozenset[str]
    stop_grace_s: float


# In start order; they stop in the reverse order. A Procfile entry named in no stage
# starts and stops with the workers.
STAGES = (
    Stage(frozenset({"broker", "postgres", "redis"}), stop_grace_s=15.0),
    Stage(frozenset({"worker"}), stop_grace_s=30.0),
    Stage(frozenset({"web"}), stop_grace_s=15.0),
    Stage(frozenset({"demo"}), stop_grace_s=5.0),
)
SERVICES_STAGE, WORKERS_STAGE = 0, 1


def stage_of(name: str) -> int:
    base = name.split(".")[0]
    for index, stage in enumerate(STAGES):
        if base in stage.processes:
            return index
    return WORKERS_STAGE


def plan(settings: Settings, procfile_text: str, demo: bool = False) -> list[tuple[str, str]]:
    """(name, command) of every process to start, in Procfile order, then the demo traffic
    when asked for. The demo is not in the Procfile: a Procfile runner in production must
    not start it."""
    out: list[tuple[str, str]] = []
    processes = dict(parse_procfile(procfile_text).processes)
    if demo and settings.demo_rounds_per_s:
        processes[DEMO[0]] = DEMO[1]
    for name, command in processes.items():
        if name in EMBEDDED and not getattr(settings, EMBEDDED[name]):
            continue
        if command.startswith("python "):
            command = f"{shlex.quote(sys.executable)} {command[len('python '):]}"
        copies = settings.worker_count if name == "worker" else 1
        for i in range(1, copies + 1):
            out.append((f"{name}.{i}" if copies > 1 else name, command))
    return out


@dataclass(frozen=True)
class Listener:
    """A port one of the processes binds, and the setting that chooses it."""

    process: str
    host: str
    port: int
    setting: str
    what: str


def listeners(settings: Settings) -> list[Listener]:
    out = []
    if settings.kafka_embedded:
        out.append(Listener("broker", "127.0.0.1", settings.embedded_kafka_port, "EMBEDDED_KAFKA_PORT",
                            "the embedded broker"))
    if settings.postgres_embedded:
        out.append(Listener("postgres", "127.0.0.1", settings.embedded_postgres_port, "EMBEDDED_POSTGRES_PORT",
                            "the embedded PostgreSQL"))
    if settings.redis_embedded:
        out.append(Listener("redis", "127.0.0.1", settings.embedded_redis_port, "EMBEDDED_REDIS_PORT",
                            "the embedded Redis"))
    out.append(Listener("web", settings.http_host, settings.http_port, "HTTP_PORT", "the HTTP API"))
    return out


def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails because something else has it. SO_REUSEADDR, as the
    servers themselves set it: a connection of a previous run in TIME_WAIT does not count."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def taken_port_message(settings: Settings, processes: list[tuple[str, str]]) -> str | None:
    """The one-line complaint about the first port a planned process would find taken."""
    names = {name for name, _ in processes}
    for listener in listeners(settings):
        if listener.process in names and port_in_use(listener.host, listener.port):
            return (f"bankroll: port {listener.port} ({listener.setting}, {listener.what}) is already in use; "
                    f"set {listener.setting} to a free port")
    return None


def banner(settings: Settings, demo: bool) -> str:
    def where(url: str, embedded: bool) -> str:
        return f"{url}{' (embedded)' if embedded else ''}"

    return "\n".join([
        "Bankroll is starting:",
        f"  HTTP API    http://{settings.http_host}:{settings.http_port}  (/health /ready /metrics /openapi.json)",
        f"  broker      {where(settings.kafka_url, settings.kafka_embedded)}",
        f"  PostgreSQL  {where(settings.database_url, settings.postgres_embedded)}",
        f"  Redis       {where(settings.redis_url, settings.redis_embedded)}",
        f"  workers     {settings.worker_count}",
        *([f"  demo        {settings.demo_rounds_per_s} game rounds/s with jackpots; widget: "
           f"http://{settings.http_host}:{settings.http_port}/jp/widget?tenant={settings.api_keys[0].tenant_id}"]
          if demo and settings.demo_rounds_per_s else []),
        "Ctrl-C stops everything.",
    ])


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


class StartFailed(Exception):
    pass


@dataclass
class Child:
    """A started process: its own process group, its output relay and its exit watch."""

    name: str
    stage: int
    proc: asyncio.subprocess.Process
    relay: asyncio.Task[None]
    watch: asyncio.Task[None]

    def signal_group(self, sig: signal.Signals) -> None:
        try:
            # Each child leads its own process group (start_new_session), whose id is its pid.
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass


class Supervisor:
    def __init__(self, settings: Settings, processes: list[tuple[str, str]], env: dict[str, str]) -> None:
        self.env = env
        self.planned = [(name, shlex.split(command), stage_of(name)) for name, command in processes]
        self.children: list[Child] = []
        self.service_ports = {listener.process: listener for listener in listeners(settings)
                              if listener.process in EMBEDDED}
        self.width = max(len(name) for name in ["system", *(name for name, _ in processes)])
        self.stop_requested = asyncio.Event()
        self.failure: str | None = None
        self._starting: asyncio.Task[None] | None = None
        # The embedded broker keeps every message it is sent, in memory, and slows down as
        # it fills; past this size it is replaced by an empty one (0: never).
        self.broker_max_mb = settings.embedded_broker_max_mb if settings.kafka_embedded else 0
        self.rotating = False
        self.rotations = 0

    def say(self, name: str, line: bytes) -> None:
        prefix = f"{time.strftime('%H:%M:%S')} {name:<{self.width}} | ".encode()
        try:
            sys.stdout.buffer.write(prefix + line.rstrip(b"\r") + b"\n")
            sys.stdout.buffer.flush()
        except OSError:
            pass  # A closed terminal or pipe must not keep the supervisor from stopping the children.

    def system(self, text: str) -> None:
        self.say("system", text.encode())

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        self._starting = asyncio.create_task(self._start())
        try:
            await self._starting
        except asyncio.CancelledError:
            pass
        except StartFailed as exc:
            self._fail(str(exc))
        watching = asyncio.create_task(self._watch_broker()) if self.broker_max_mb else None
        await self.stop_requested.wait()
        if watching is not None:
            watching.cancel()
        await self._stop()
        return 1 if self.failure else 0

    async def _watch_broker(self) -> None:
        while not self.stop_requested.is_set():
            await asyncio.sleep(BROKER_CHECK_INTERVAL_S)
            broker = next((c for c in self.children if c.name == "broker" and c.proc.returncode is None), None)
            if broker is not None and rss_mb(broker.proc.pid) > self.broker_max_mb:
                try:
                    await self._rotate_broker()
                except StartFailed as exc:
                    self._fail(str(exc))

    async def _rotate_broker(self) -> None:
        """Replace the embedded broker by an empty one: everything it held is either in
        PostgreSQL (every answered operation, every record) or a message nobody was told
        of yet. The processes above it stop in order, each draining, and start again;
        the workers restore their partitions from PostgreSQL. Requests meanwhile are
        refused (clients retry with their idempotency keys)."""
        self.rotating = True
        try:
            self.system(f"the embedded broker holds over {self.broker_max_mb} MB; replacing it with an empty one "
                        "(EMBEDDED_BROKER_MAX_MB)")
            above = [c for c in self.children if c.stage > SERVICES_STAGE]
            for index in reversed(range(SERVICES_STAGE + 1, len(STAGES))):
                members = [c for c in above if c.stage == index]
                if members:
                    await self._stop_stage(members, STAGES[index].stop_grace_s)
            broker = [c for c in self.children if c.name == "broker"]
            await self._stop_stage(broker, STAGES[SERVICES_STAGE].stop_grace_s)
            self.children = [c for c in self.children if c not in above and c not in broker]
            for name, argv, stage in self.planned:
                if name == "broker":
                    await self._wait_accepting(await self._spawn(name, argv, stage))
            for index in range(SERVICES_STAGE + 1, len(STAGES)):
                for name, argv, stage in self.planned:
                    if stage == index:
                        await self._spawn(name, argv, stage)
            self.rotations += 1
        finally:
            self.rotating = False

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.stop_requested.is_set():
            self.system(f"{sig.name} received, stopping")
            self._request_stop()

    def _request_stop(self) -> None:
        self.stop_requested.set()
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()

    def _fail(self, message: str) -> None:
        self.system(message)
        if self.failure is None and not self.stop_requested.is_set():
            self.failure = message
        self._request_stop()

    async def _start(self) -> None:
        for index in range(len(STAGES)):
            started = [await self._spawn(name, argv, stage) for name, argv, stage in self.planned if stage == index]
            if index == SERVICES_STAGE:
                await asyncio.gather(*(self._wait_accepting(child) for child in started))

    async def _spawn(self, name: str, argv: list[str], stage: int) -> Child:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO_ROOT, env=self.env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                # Its own process group: a terminal's Ctrl-C reaches only this supervisor,
                # which stops the children in order.
                start_new_session=True,
            )
        except OSError as exc:
            raise StartFailed(f"{name} could not start: {exc}") from None
        self.system(f"{name} started (pid {proc.pid})")
        child = Child(name, stage, proc, relay=asyncio.create_task(self._relay(name, proc)),
                      watch=asyncio.create_task(self._watch(name, proc)))
        self.children.append(child)
        return child

    async def _wait_accepting(self, child: Child) -> None:
        listener = self.service_ports[child.name]
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + SERVICE_START_TIMEOUT_S
        while child.proc.returncode is None:
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(listener.host, listener.port), 1.0)
            except (OSError, asyncio.TimeoutError):
                if loop.time() > deadline_s:
                    raise StartFailed(f"{child.name} accepted no connection on port {listener.port} "
                                      f"within {SERVICE_START_TIMEOUT_S:.0f} s") from None
                await asyncio.sleep(0.1)
                continue
            writer.close()
            self.system(f"{child.name} accepts connections on port {listener.port}")
            return
        # It exited while starting: its watch reports that and stops everything.
        await asyncio.shield(child.watch)

    async def _relay(self, name: str, proc: asyncio.subprocess.Process) -> None:
        if proc.stdout is None:
            return
        pending = b""
        while chunk := await proc.stdout.read(65536):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self.say(name, line)
        if pending:
            self.say(name, pending)

    async def _watch(self, name: str, proc: asyncio.subprocess.Process) -> None:
        returncode = await proc.wait()
        if self.stop_requested.is_set() or self.rotating:
            self.system(f"{name} exited ({describe_exit(returncode)})")
        else:
            self._fail(f"{name} exited unexpectedly ({describe_exit(returncode)}); stopping everything")

    async def _stop(self) -> None:
        for index in reversed(range(len(STAGES))):
            members = [c for c in self.children if c.stage == index]
            if members:
                self.system(f"stopping {', '.join(c.name for c in members)}")
                await self._stop_stage(members, STAGES[index].stop_grace_s)
        if self.children:
            _, late = await asyncio.wait([c.relay for c in self.children], timeout=OUTPUT_DRAIN_TIMEOUT_S)
            for relay in late:
                relay.cancel()
        self.system("every process stopped")

    async def _stop_stage(self, members: list[Child], grace_s: float) -> None:
        for child in members:
            child.signal_group(signal.SIGTERM)
        watches = [c.watch for c in members]
        await asyncio.wait(watches, timeout=grace_s)
        for child in members:
            if child.proc.returncode is None:
                self.system(f"{child.name} did not stop within {grace_s:.0f} s, killing it")
            # Also whatever the child started and left behind in its group.
            child.signal_group(signal.SIGKILL)
        await asyncio.wait(watches)


def main() -> None:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"bankroll: {exc}", file=sys.stderr)
        sys.exit(1)
    demo = "--demo" in sys.argv[1:]
    processes = plan(settings, (REPO_ROOT / "Procfile").read_text(), demo)
    taken = taken_port_message(settings, processes)
    if taken:
        print(taken, file=sys.stderr)
        sys.exit(1)
    print(banner(settings, demo), flush=True)
    env = process_environment(settings, PYTHONUNBUFFERED="1")
    sys.exit(asyncio.run(Supervisor(settings, processes, env).run()))


if __name__ == "__main__":
    main()
