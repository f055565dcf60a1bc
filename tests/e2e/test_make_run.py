"""The README's first command as a user runs it: `make run` in the repository with none of
Bankroll's settings in the environment and a fresh run directory. It must serve a signed
deposit end to end, stop in order on SIGTERM and leave no process or port behind; a
taken port must be one line and start nothing."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from app.api.signing import sign, sign_psp
from app.run import port_in_use
from config.settings import REPO_ROOT, SETTINGS

pytestmark = pytest.mark.integration

BASE_URL = "http://127.0.0.1:8080"
DEFAULT_PORTS = {8080: "HTTP_PORT", 19092: "EMBEDDED_KAFKA_PORT", 15432: "EMBEDDED_POSTGRES_PORT",
                 16379: "EMBEDDED_REDIS_PORT"}
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
READY_TIMEOUT_S = 120.0
BALANCE_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 120.0


def bare_environment(run_dir: Path) -> dict[str, str]:
    """This environment without a single Bankroll setting, but for the run directory."""
    settings = {s.env for s in SETTINGS}
    return {**{k: v for k, v in os.environ.items() if k not in settings}, "BANKROLL_RUN_DIR": str(run_dir)}


def processes_of(run_dir: Path) -> dict[int, str]:
    """pid -> command line of every process this run started: each one inherited the run
    directory in its environment (or names it on its command line)."""
    marker = f"BANKROLL_RUN_DIR={run_dir}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if marker in environ.split(b"\0") or str(run_dir).encode() in cmdline:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
    return found


def kill_what_is_left(proc: subprocess.Popen, run_dir: Path) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in processes_of(run_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def log_tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def request(method: str, path: str, body: dict | None = None, *, psp_secret: str | None = None) -> tuple[int, dict]:
    raw = b"" if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if psp_secret is not None:
        headers["X-PSP-Signature"] = sign_psp(psp_secret, raw)
    else:
        timestamp = str(int(time.time()))
        headers.update({"X-Api-Key": "dev", "X-Timestamp": timestamp,
                        "X-Signature": sign("dev-secret", timestamp, method, path, raw)})
    req = urllib.request.Request(BASE_URL + path, data=raw if body is not None else None, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_ready(make: subprocess.Popen, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert make.poll() is None, f"make run exited with {make.returncode}:\n{log_tail(log_path)}"
        try:
            if request("GET", "/ready")[1].get("ready"):
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"GET /ready did not answer ready within {READY_TIMEOUT_S:.0f} s:\n{log_tail(log_path)}")


def cash_available(player_id: str) -> int | None:
    status, body = request("GET", f"/v1/wallets?player_id={player_id}&types=CASH")
    assert status == 200, body
    return next((w["available"] for w in body["wallets"] if w["type"] == "CASH"), None)


def test_make_run_serves_a_signed_deposit_and_stops_leaving_nothing_behind(tmp_path):
    taken = [f"{port} ({setting})" for port, setting in DEFAULT_PORTS.items() if port_in_use("127.0.0.1", port)]
    if taken:
        pytest.skip(f"make run needs its default ports, and {', '.join(taken)} is already in use")
    run_dir = tmp_path / "run"
    log_path = tmp_path / "make-run.log"
    with open(log_path, "wb") as log:
        make = subprocess.Popen(["make", "run"], cwd=REPO_ROOT, env=bare_environment(run_dir),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_ready(make, log_path)

        player = f"p-{uuid.uuid4().hex[:12]}"
        deposit_id = f"dep-{player}"
        status, body = request("POST", "/v1/players", {"player_id": player, "currency": "EUR", "country": "DE"})
        assert status == 201, body
        status, body = request("POST", "/v1/deposits", {
            "deposit_id": deposit_id, "player_id": player, "amount": 12050, "currency": "EUR", "method": "card",
            "idempotency_key": deposit_id})
        assert (status, body.get("state")) == (202, "PENDING"), body
        status, body = request("POST", "/v1/psp/sandbox/webhooks", {
            "event_id": f"evt-{deposit_id}", "deposit_id": deposit_id, "status": "SUCCEEDED", "amount": 12050,
            "currency": "EUR", "fee": 50}, psp_secret="sandbox-secret")
        assert status == 200, body
        deadline = time.monotonic() + BALANCE_TIMEOUT_S
        while (available := cash_available(player)) != 12000:
            assert time.monotonic() < deadline, f"CASH shows {available}, not 12050 - 50"
            time.sleep(0.2)

        make.send_signal(signal.SIGTERM)
        try:
            make.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"make run still running {STOP_TIMEOUT_S:.0f} s after SIGTERM:\n{log_tail(log_path)}")
        assert processes_of(run_dir) == {}
        assert [port for port in DEFAULT_PORTS if port_in_use("127.0.0.1", port)] == []

        output = log_path.read_text(errors="replace")
        stops = [line.split("| ", 1)[1] for line in output.splitlines() if " system " in line and "| stopping " in line]
        assert stops == ["stopping demo", "stopping web", "stopping worker", "stopping broker, postgres, redis"]
        assert "unexpectedly" not in output and "did not stop within" not in output, log_tail(log_path)
    finally:
        kill_what_is_left(make, run_dir)


def test_a_taken_port_is_one_line_on_stderr_and_starts_nothing(tmp_path):
    run_dir = tmp_path / "run"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {**bare_environment(run_dir), "EMBEDDED_KAFKA_PORT": str(port)}
        proc = subprocess.Popen([str(VENV_PYTHON), "-m", "app.run"], cwd=REPO_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=60)
        finally:
            kill_what_is_left(proc, run_dir)
    assert (proc.returncode, stderr, stdout) == (
        1, f"bankroll: port {port} (EMBEDDED_KAFKA_PORT, the embedded broker) is already in use; "
           f"set EMBEDDED_KAFKA_PORT to a free port\n", "")
    assert not run_dir.exists()
