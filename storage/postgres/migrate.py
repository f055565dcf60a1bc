"""Applies storage/postgres/migrations/*.sql in name order, each once, under an advisory
lock so the web process and every worker may call it at start-up concurrently."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import asyncpg

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_ID = 0x42414E4B  # "BANK"

log = logging.getLogger("bankroll.migrate")


async def connect_with_retry(dsn: str, timeout_s: float = 60.0) -> asyncpg.Connection:
    """PostgreSQL may still be starting when a process boots (make run starts all at once)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.info("waiting for PostgreSQL: %s", exc)
            await asyncio.sleep(0.5)


async def migrate(dsn: str) -> list[str]:
    conn = await connect_with_retry(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for path in sorted(MIGRATIONS.glob("*.sql")):
                if path.name in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
                applied.append(path.name)
                log.info("applied migration %s", path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()
    return applied


if __name__ == "__main__":
    from config import load_settings

    logging.basicConfig(level=logging.INFO)
    print(asyncio.run(migrate(load_settings().database_url)))
