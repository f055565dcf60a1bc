"""One suite, every adapter: the in-memory stores must behave as PostgreSQL and Redis do."""
from __future__ import annotations

import json
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.domain.ledger import Posting, check_deltas_balance
from storage.memory.stores import MemoryDepositRoutes, MemoryLedgerStore, MemorySignatureGuard, MemoryWalletCache
from storage.postgres.migrate import migrate
from storage.postgres.stores import PostgresDepositRoutes, PostgresLedgerStore
from storage.redis.stores import RedisSignatureGuard, RedisWalletCache

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "postgres"])
async def pg_adapters(request, stack):
    if request.param == "memory":
        yield MemoryLedgerStore(), MemoryDepositRoutes()
        return
    dsn = stack.env["DATABASE_URL"]
    await migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    yield PostgresLedgerStore(pool), PostgresDepositRoutes(pool)
    await pool.close()


@pytest.fixture(params=["memory", "redis"])
async def redis_adapters(request, stack):
    if request.param == "memory":
        yield MemoryWalletCache(), MemorySignatureGuard()
        return
    client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    yield RedisWalletCache(client), RedisSignatureGuard(client)
    await client.aclose()


def legs(tenant: str, op: str, amount: int = 100, fee: int = 10) -> list[Posting]:
    return [
        Posting(tenant, op, 0, "system:PSP_SETTLEMENT:sandbox:EUR", "player:p1:CASH:EUR", amount, "EUR", "deposit",
                1_700_000_000_123, "psp sandbox event e1", "p1"),
        Posting(tenant, op, 1, "player:p1:CASH:EUR", "system:PSP_FEES:sandbox:EUR", fee, "EUR", "deposit_fee",
                1_700_000_000_123, "psp sandbox event e1", "p1"),
    ]


async def test_append_is_idempotent_per_operation_and_leg(pg_adapters):
    ledger, _ = pg_adapters
    tenant = f"t{uuid.uuid4().hex}"
    consumer = f"c{uuid.uuid4().hex}"
    assert await ledger.append(legs(tenant, "op1"), {("ledger.postings", 0): 5}, consumer) == 2
    # A redelivery, even with a different amount, never changes or doubles what is stored.
    assert await ledger.append(legs(tenant, "op1", amount=999), {("ledger.postings", 0): 3}, consumer) == 0
    assert await ledger.append(legs(tenant, "op2"), {("ledger.postings", 1): 1}, consumer) == 2
    assert await ledger.positions(consumer) == {("ledger.postings", 0): 5, ("ledger.postings", 1): 1}
    stored = await ledger.entries(tenant, "op1")
    assert stored == legs(tenant, "op1")


async def test_balances_are_credits_minus_debits_and_sum_to_zero(pg_adapters):
    ledger, _ = pg_adapters
    tenant = f"t{uuid.uuid4().hex}"
    await ledger.append(legs(tenant, "op1") + legs(tenant, "op2", amount=50, fee=0)[:1], {}, "c")
    balances = await ledger.account_balances(tenant)
    assert balances == {
        "system:PSP_SETTLEMENT:sandbox:EUR": -150,
        "player:p1:CASH:EUR": 140,
        "system:PSP_FEES:sandbox:EUR": 10,
    }
    check_deltas_balance(balances)
    assert await ledger.account_balances(f"other{tenant}") == {}


async def test_deposit_route_is_claimed_once(pg_adapters):
    _, routes = pg_adapters
    tenant = f"t{uuid.uuid4().hex}"
    assert await routes.lookup(tenant, "d1") is None
    assert await routes.claim(tenant, "d1", "p1") == "p1"
    assert await routes.claim(tenant, "d1", "p2") == "p1"
    assert await routes.lookup(tenant, "d1") == "p1"
    assert await routes.lookup("another-tenant", "d1") is None


async def test_cache_keeps_the_newest_version(redis_adapters):
    cache, _ = redis_adapters
    tenant = f"t{uuid.uuid4().hex}"
    assert await cache.get(tenant, "p1") is None
    assert await cache.put(tenant, "p1", 5, json.dumps({"version": 5}), 30)
    assert not await cache.put(tenant, "p1", 4, json.dumps({"version": 4}), 30)
    assert await cache.put(tenant, "p1", 5, json.dumps({"version": 5, "again": True}), 30)
    assert json.loads(await cache.get(tenant, "p1")) == {"version": 5, "again": True}


async def test_signature_is_accepted_once(redis_adapters):
    _, guard = redis_adapters
    signature = uuid.uuid4().hex
    assert await guard.first_use(signature, 600)
    assert not await guard.first_use(signature, 600)
    assert await guard.first_use(uuid.uuid4().hex, 600)


async def test_ledger_rows_cannot_be_changed_or_removed(stack):
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        await migrate(stack.env["DATABASE_URL"])
        for statement in ("UPDATE ledger_entries SET amount_minor = 1", "DELETE FROM ledger_entries",
                          "TRUNCATE ledger_entries"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()
