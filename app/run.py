"""`make run`: the whole system from the Procfile, on the embedded stack by default.

The embedded broker, PostgreSQL and Redis entries are skipped when their URL is set.
Ctrl-C or SIGTERM stops every process (honcho signals each process group, then kills
what is left after a grace period)."""
from __future__ import annotations

import sys

from honcho.environ import parse_procfile
from honcho.manager import Manager

from config import Settings, load_settings
from config.settings import REPO_ROOT, process_environment

EMBEDDED = {"broker": "kafka_embedded", "postgres": "postgres_embedded", "redis": "redis_embedded"}


DEMO = ("demo", "python -m app.demo")


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
            command = f"{sys.executable} {command[len('python '):]}"
        copies = settings.worker_count if name == "worker" else 1
        for i in range(1, copies + 1):
            out.append((f"{name}.{i}" if copies > 1 else name, command))
    return out


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


def main() -> None:
    settings = load_settings()
    demo = "--demo" in sys.argv[1:]
    processes = plan(settings, (REPO_ROOT / "Procfile").read_text(), demo)
    print(banner(settings, demo), flush=True)
    manager = Manager()
    env = process_environment(settings, PYTHONUNBUFFERED="1")
    for name, command in processes:
        manager.add_process(name, command, cwd=str(REPO_ROOT), env=env)
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
