"""`python -m app.jp_verify` against the test stack's PostgreSQL and Redis: a pool's chain
stored as the ledger flush stores it verifies; tampered with as only a database superuser
can (the append-only trigger switched off), it is reported at the entry touched."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.domain.jackpot.core import pool_view
from app.jp_verify import EXIT_OK, EXIT_TAMPERED, run
from config.settings import REPO_ROOT
from storage.postgres.migrate import migrate
from storage.postgres.stores import PostgresLedgerStore
from storage.redis.stores import RedisPoolCache
from tests.unit.test_jp_verify import POOL, pool_chain

pytestmark = pytest.mark.integration


@pytest.fixture
async def stored(stack):
    """A tenant of its own with one pool's chain in audit_log: (tenant, records, head, pool record)."""
    dsn = stack.env["DATABASE_URL"]
    await migrate(dsn)
    tenant = f"jpv{uuid.uuid4().hex[:12]}"
    records, head, state = pool_chain(tenant_id=tenant)
    db = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        await PostgresLedgerStore(db).append([], {}, "test", audit=records)
    finally:
        await db.close()
    return tenant, records, head, state


async def publish_snapshot(stack, tenant: str, state) -> None:
    """The pool's snapshot in Redis, as the jackpot agent caches it, chain head included."""
    client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    try:
        assert await RedisPoolCache(client).put(tenant, POOL, state.version, json.dumps(pool_view(state)), 300)
    finally:
        await client.aclose()


async def as_superuser(stack, statement: str, *args) -> str:
    """Run one statement with the append-only trigger off, in one transaction, so no other
    session ever sees the table unguarded."""
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
            status = await conn.execute(statement, *args)
            await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        return status
    finally:
        await conn.close()


def verify_command(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "app.jp_verify", "--wait-s", "0.5", *args],
        cwd=REPO_ROOT, env=stack.env, capture_output=True, text=True, timeout=120,
    )


def pool_line(done: subprocess.CompletedProcess) -> str:
    [line] = [line for line in done.stdout.splitlines() if line.startswith(f"pool {POOL}:")]
    return line


async def test_an_intact_chain_verifies_and_an_edited_entry_is_found(stack, stored):
    tenant, records, head, state = stored
    n = len(records)

    done = verify_command(stack, "--tenant", tenant)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert pool_line(done) == (f"pool {POOL}: ok, {n} entries, head {head.seq}:{head.hash} "
                               "(no published head: entries cut off the end cannot be detected)")

    await publish_snapshot(stack, tenant, state)
    done = verify_command(stack, "--tenant", tenant)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert pool_line(done) == f"pool {POOL}: ok, {n} entries, head {head.seq}:{head.hash}"
    done = verify_command(stack, "--tenant", tenant, "--pool", POOL, "--head", f"{head.seq}:{head.hash}", "--json")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    [pool] = json.loads(done.stdout)["pools"]
    assert (pool["ok"], pool["entries"], pool["head_source"]) == (True, n, "argument")

    # Row-level security: another tenant sees none of these records.
    done = verify_command(stack, "--tenant", f"other-{tenant}")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert f"tenant other-{tenant}: no jackpot pools with chain records" in done.stdout

    drop = [r.code for r in records].index("drop")
    status = await as_superuser(
        stack,
        "UPDATE audit_log SET detail = jsonb_set(detail, '{payload,player_id}', '\"mallory\"') "
        "WHERE tenant_id = $1 AND audit_id = $2",
        tenant, records[drop].audit_id,
    )
    assert status == "UPDATE 1"
    done = verify_command(stack, "--tenant", tenant)
    assert done.returncode == EXIT_TAMPERED, done.stdout + done.stderr
    assert pool_line(done) == f"pool {POOL}: TAMPERED at entry {drop} (its hash does not match its content: edited)"
    assert done.stdout.splitlines()[-1] == "TAMPERED: 1 of 1 pool"


async def test_a_deleted_middle_row_is_found(stack, stored):
    tenant, records, head, state = stored
    await publish_snapshot(stack, tenant, state)
    status = await as_superuser(stack, "DELETE FROM audit_log WHERE tenant_id = $1 AND audit_id = $2",
                                tenant, records[3].audit_id)
    assert status == "DELETE 1"
    out = io.StringIO()
    assert await run(stack.settings, [tenant], wait_s=0.5, out=out) == EXIT_TAMPERED
    assert f"pool {POOL}: TAMPERED at entry 3 (entry 4 is stored where entry 3 belongs: entry 3 is missing)" in (
        out.getvalue().splitlines())


async def test_a_deleted_last_row_is_found_against_the_published_head(stack, stored):
    tenant, records, head, state = stored
    n = len(records)
    await as_superuser(stack, "DELETE FROM audit_log WHERE tenant_id = $1 AND audit_id = $2",
                       tenant, records[-1].audit_id)
    done = verify_command(stack, "--tenant", tenant)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr  # nothing says the chain was longer
    assert pool_line(done).endswith("(no published head: entries cut off the end cannot be detected)")

    done = verify_command(stack, "--tenant", tenant, "--pool", POOL, "--head", f"{head.seq}:{head.hash}")
    assert done.returncode == EXIT_TAMPERED, done.stdout + done.stderr
    await publish_snapshot(stack, tenant, state)
    done = verify_command(stack, "--tenant", tenant)
    assert done.returncode == EXIT_TAMPERED, done.stdout + done.stderr
    assert pool_line(done) == (f"pool {POOL}: TAMPERED at entry {n - 1} "
                               f"(the published head is at seq {n}: 1 entry missing at the end)")
