"""A worker that takes over a partition rebuilds its table from the whole changelog,
including the records of a last batch that holds several (Tansu's ListOffsets answer
alone would stop recovery before them)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from app.api.bus import bootstrap_servers, ensure_topics
from app.topics import WALLET_COMMANDS, topic_name
from config import Settings
from config.settings import REPO_ROOT

pytestmark = pytest.mark.integration
APP = Path(__file__).with_name("table_recovery_app.py")


def wait_for_file(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path.name} did not appear in {timeout_s} s")
        time.sleep(0.1)


def worker(env: dict, mode: str, out: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(APP), mode, str(out)], cwd=REPO_ROOT, env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


async def test_recovery_reads_every_changelog_record(stack, tmp_path):
    run = uuid.uuid4().hex[:8]
    env = {**stack.env, "FAUST_APP_ID": f"recovery-{run}", "TOPIC_PREFIX": f"recovery-{run}.",
           "TOPIC_PARTITIONS": "1", "BANKROLL_RUN_DIR": str(tmp_path / "run")}
    settings = Settings.from_env(env)
    # As the web process does at start-up: the command topic exists with the table's
    # partition count before anything is produced to it.
    await ensure_topics(settings)
    writer = worker(env, "write", tmp_path / "written", tmp_path / "write.log")
    try:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url), linger_ms=5)
        await producer.start()
        try:
            last: dict[str, str] = {}
            for i in range(400):
                key = f"k{i % 40:02d}"
                last[key] = f"v{i}"
                await producer.send(topic_name(settings, WALLET_COMMANDS), last[key].encode(), key=key.encode())
            await producer.send(topic_name(settings, WALLET_COMMANDS), b"last", key=b"zz")
            await producer.flush()
        finally:
            await producer.stop()
        wait_for_file(tmp_path / "written", 90)
    finally:
        # A clean stop commits the command offsets: the next worker will not process them
        # again, so only a complete changelog recovery has their effects.
        writer.send_signal(signal.SIGTERM)
        writer.wait(timeout=30)
    reader = worker(env, "recover", tmp_path / "table.json", tmp_path / "recover.log")
    try:
        wait_for_file(tmp_path / "table.json", 90)
    finally:
        reader.send_signal(signal.SIGTERM)
        reader.wait(timeout=30)
    table = json.loads((tmp_path / "table.json").read_text())
    stale = {k: (table.get(k), v) for k, v in last.items() if table.get(k) != v}
    assert not stale, f"{len(stale)} of {len(last)} keys recovered stale: {dict(list(stale.items())[:5])}"
