"""What `make run` starts, what its children are told, the taken-port message, and the
supervisor's ordered stop (with stand-in processes)."""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.run import plan, taken_port_message
from config import Settings
from config.settings import REPO_ROOT, process_environment

SERVICE_URLS = ("KAFKA_URL", "DATABASE_URL", "REDIS_URL")


def names(env: dict, demo: bool = False) -> list[str]:
    return [name for name, _ in plan(Settings.from_env(env), (REPO_ROOT / "Procfile").read_text(), demo)]


def test_the_local_run_starts_everything_and_the_demo_only_when_asked():
    assert names({}) == ["broker", "postgres", "redis", "worker", "web"]
    assert names({}, demo=True) == ["broker", "postgres", "redis", "worker", "web", "demo"]
    assert names({"DEMO_ROUNDS_PER_S": "0"}, demo=True) == ["broker", "postgres", "redis", "worker", "web"]
    assert names({"DATABASE_URL": "postgresql://x/y", "WORKER_COUNT": "2"}) == [
        "broker", "redis", "worker.1", "worker.2", "web"]


def test_children_of_the_local_run_see_the_embedded_services_as_embedded(monkeypatch):
    for name in SERVICE_URLS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAFKA_URL", "")  # an empty URL in the parent's environment is no URL either
    parent = Settings.from_env({"EMBEDDED_KAFKA_PORT": "29092"})
    env = process_environment(parent)
    assert not set(SERVICE_URLS) & env.keys()
    assert (env["EMBEDDED_KAFKA_PORT"], env["EMBEDDED_POSTGRES_PORT"], env["EMBEDDED_REDIS_PORT"]) == (
        "29092", "15432", "16379")
    child = Settings.from_env(env)  # the local jackpot seed secret is accepted: the broker is embedded
    assert (child.kafka_embedded, child.postgres_embedded, child.redis_embedded) == (True, True, True)
    assert (child.kafka_url, child.database_url, child.redis_url) == (
        parent.kafka_url, parent.database_url, parent.redis_url)


def test_children_get_the_url_of_each_service_configured_by_url(monkeypatch):
    for name in SERVICE_URLS:
        monkeypatch.delenv(name, raising=False)
    parent = Settings.from_env({"REDIS_URL": "redis://cache:6379/2"})
    env = process_environment(parent)
    assert env["REDIS_URL"] == "redis://cache:6379/2" and "EMBEDDED_REDIS_PORT" not in env
    child = Settings.from_env(env)
    assert not child.redis_embedded and child.redis_url == "redis://cache:6379/2"
    assert child.kafka_embedded and child.postgres_embedded


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def settings_on(ports: list[int], **extra: str) -> Settings:
    kafka, postgres, redis, http = ports
    return Settings.from_env({"EMBEDDED_KAFKA_PORT": str(kafka), "EMBEDDED_POSTGRES_PORT": str(postgres),
                              "EMBEDDED_REDIS_PORT": str(redis), "HTTP_PORT": str(http), **extra})


def local_plan(settings: Settings) -> list[tuple[str, str]]:
    return plan(settings, (REPO_ROOT / "Procfile").read_text())


@pytest.mark.parametrize("taken, setting, what", [
    (0, "EMBEDDED_KAFKA_PORT", "the embedded broker"),
    (1, "EMBEDDED_POSTGRES_PORT", "the embedded PostgreSQL"),
    (2, "EMBEDDED_REDIS_PORT", "the embedded Redis"),
    (3, "HTTP_PORT", "the HTTP API"),
])
def test_a_taken_port_is_named_with_the_setting_that_moves_it(taken, setting, what):
    ports = free_ports(4)
    settings = settings_on(ports)
    assert taken_port_message(settings, local_plan(settings)) is None
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[taken]))
        holder.listen()
        assert taken_port_message(settings, local_plan(settings)) == (
            f"bankroll: port {ports[taken]} ({setting}, {what}) is already in use; set {setting} to a free port")


def test_the_port_of_a_service_configured_by_url_is_not_checked():
    ports = free_ports(4)
    settings = settings_on(ports, KAFKA_URL="kafka://broker:9092", JACKPOT_SEED_SECRET="s" * 32)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[0]))
        holder.listen()
        assert taken_port_message(settings, local_plan(settings)) is None


# A stand-in for a process of the Procfile: notes when it is ready and when it is asked to
# stop, takes a moment to finish, and then exits; or exits by itself once the web stand-in
# is ready, or ignores SIGTERM.
STAND_IN = """
import signal, sys, time
name, notes, behaviour = sys.argv[1:4]
def note(what):
    with open(notes, "a") as f:
        f.write(f"{name} {what}\\n")
def stop(*_):
    note("stopping")
    time.sleep(0.3)
    note("stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN if behaviour == "stubborn" else stop)
note("ready")
print(f"{name} is up", flush=True)
if behaviour == "crash":
    # Exits once the web stand-in is up and handles SIGTERM, however loaded the machine.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(notes) as f:
            if "web ready" in f.read():
                break
        time.sleep(0.05)
    sys.exit(3)
while True:
    time.sleep(1)
"""

SUPERVISE = """
import asyncio, json, os, sys
from app.run import Supervisor
from config import Settings
sys.exit(asyncio.run(Supervisor(Settings.from_env({}), json.loads(sys.argv[1]), dict(os.environ)).run()))
"""


def supervise(tmp_path: Path, behaviours: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    notes = tmp_path / "notes"
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    processes = [(name, shlex.join([sys.executable, str(script), name, str(notes), behaviour]))
                 for name, behaviour in behaviours.items()]
    proc = subprocess.Popen([sys.executable, "-c", SUPERVISE, json.dumps(processes)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return proc, notes


def lines_of(notes: Path) -> list[str]:
    return notes.read_text().splitlines() if notes.exists() else []


def wait_for_notes(notes: Path, wanted: set[str], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not wanted <= set(lines_of(notes)):
        assert time.monotonic() < deadline, lines_of(notes)
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_supervisor_stops_the_demo_then_the_web_then_the_workers(tmp_path):
    proc, notes = supervise(tmp_path, {"worker.1": "", "worker.2": "", "web": "", "demo": ""})
    try:
        wait_for_notes(notes, {"worker.1 ready", "worker.2 ready", "web ready", "demo ready"})
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    stops = [line for line in lines_of(notes) if not line.endswith("ready")]
    assert stops[:4] == ["demo stopping", "demo stopped", "web stopping", "web stopped"]
    assert sorted(stops[4:]) == sorted(["worker.1 stopping", "worker.1 stopped", "worker.2 stopping",
                                        "worker.2 stopped"])
    assert "| demo is up" in output and "| SIGTERM received, stopping" in output
    assert [line.split("| ", 1)[1] for line in output.splitlines() if "| stopping " in line] == [
        "stopping demo", "stopping web", "stopping worker.1, worker.2"]


def test_a_process_that_exits_by_itself_stops_the_rest_and_fails_the_run(tmp_path):
    proc, notes = supervise(tmp_path, {"worker": "crash", "web": ""})
    try:
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, output
    assert "worker exited unexpectedly (status 3); stopping everything" in output
    assert lines_of(notes)[-2:] == ["web stopping", "web stopped"]


def test_a_process_that_ignores_sigterm_is_killed_after_its_grace_period(tmp_path):
    proc, notes = supervise(tmp_path, {"demo": "stubborn"})
    try:
        wait_for_notes(notes, {"demo ready"})
        started = next(line for line in iter(proc.stdout.readline, "") if "demo started (pid" in line)
        pid = int(started.rstrip().removesuffix(")").rsplit(" ", 1)[1])
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    assert "demo did not stop within 5 s, killing it" in output and "demo exited (SIGKILL)" in output
    assert not pid_alive(pid)


# A stand-in broker: listens on its port (the supervisor waits for that), notes like the others.
BROKER_STAND_IN = """
import signal, socket, sys, time
port, notes, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def note(what):
    with open(notes, "a") as f:
        f.write(f"{name} {what}\\n")
def stop(*_):
    note("stopped")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
note("ready")
while True:
    time.sleep(1)
"""

# A supervisor whose broker is past its size at once (1 MB), replaced once.
ROTATE = """
import asyncio, json, os, sys
import app.run as run
from config import Settings
class Once(run.Supervisor):
    async def _rotate_broker(self):
        await super()._rotate_broker()
        self.broker_max_mb = 10**9
run.BROKER_CHECK_INTERVAL_S = 0.5
settings = Settings.from_env({"EMBEDDED_KAFKA_PORT": sys.argv[2], "EMBEDDED_BROKER_MAX_MB": "1"})
sys.exit(asyncio.run(Once(settings, json.loads(sys.argv[1]), dict(os.environ)).run()))
"""


def test_a_broker_past_its_size_is_replaced_and_everything_above_it_restarted_in_order(tmp_path):
    notes = tmp_path / "notes"
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    (tmp_path / "broker.py").write_text(BROKER_STAND_IN)
    [port] = free_ports(1)
    processes = [("broker", shlex.join([sys.executable, str(tmp_path / "broker.py"), str(port), str(notes), "broker"]))]
    processes += [(name, shlex.join([sys.executable, str(tmp_path / "stand_in.py"), name, str(notes), ""]))
                  for name in ("worker", "web", "demo")]
    proc = subprocess.Popen([sys.executable, "-c", ROTATE, json.dumps(processes), str(port)], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        # Every process up twice: the stand-in broker is past 1 MB, so it is replaced.
        deadline = time.monotonic() + 30
        while sum(line.endswith(" ready") for line in lines_of(notes)) < 8:
            assert time.monotonic() < deadline and proc.poll() is None, lines_of(notes)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, output
    lines = lines_of(notes)
    assert sorted(lines[:4]) == ["broker ready", "demo ready", "web ready", "worker ready"]
    rotation = lines[4:]
    # The processes above the broker stop in order, each finishing, then the broker; then
    # an empty broker, and the rest start again above it.
    assert rotation[:7] == ["demo stopping", "demo stopped", "web stopping", "web stopped", "worker stopping",
                            "worker stopped", "broker stopped"]
    assert rotation[7] == "broker ready" and sorted(rotation[8:11]) == ["demo ready", "web ready", "worker ready"]
    assert "replacing it with an empty one (EMBEDDED_BROKER_MAX_MB)" in output and "unexpectedly" not in output
