"""Row-level security keeps tenants apart in PostgreSQL, whatever a query's WHERE clause
says, even though the service itself connects as a superuser."""
from __future__ import annotations

import uuid

import asyncpg
import pytest

from app.domain.audit import AuditRecord
from app.domain.ledger import Posting
from storage.postgres.migrate import migrate
from storage.postgres.stores import PostgresDepositRoutes, PostgresLedgerStore, create_pool, tenant_transaction

pytestmark = pytest.mark.integration

TENANT_TABLES = ("ledger_entries", "deposit_routes", "audit_log")


def leg(tenant: str, op: str, player: str, amount: int) -> Posting:
    return Posting(tenant, op, 0, "system:PSP_SETTLEMENT:sandbox:EUR", f"player:{player}:CASH:EUR", amount, "EUR",
                   "deposit", 1_700_000_000_000, "", player)


def audit(tenant: str, audit_id: str, player: str) -> AuditRecord:
    return AuditRecord(tenant, audit_id, player, "refusal", "deposit_limit_exceeded", 1_700_000_000_000, {"limit": 1})


@pytest.fixture
async def tenants(stack):
    """Tenant A with 3 ledger rows, 2 deposit routes and 1 audit record; tenant B with 2, 1
    and 2; all written by the system writers, as the ledger flush and the API write them.
    A pool of one connection, so every transaction below reuses the same session."""
    dsn = stack.env["DATABASE_URL"]
    await migrate(dsn)
    pool = await create_pool(dsn, min_size=1, max_size=1)
    a, b = f"a{uuid.uuid4().hex}", f"b{uuid.uuid4().hex}"
    ledger = PostgresLedgerStore(pool)
    await ledger.append(
        [leg(a, "op1", "pa", 100), leg(a, "op2", "pa", 200), leg(a, "op3", "pa2", 300),
         leg(b, "op1", "pb", 1000), leg(b, "op2", "pb", 2000)],
        {},
        "rls-test",
        audit=[audit(a, "a1", "pa"), audit(b, "b1", "pb"), audit(b, "b2", "pb")],
    )
    routes = PostgresDepositRoutes(pool)
    for tenant, deposit_id, player in ((a, "d1", "pa"), (a, "d2", "pa2"), (b, "d1", "pb")):
        await routes.claim(tenant, deposit_id, player)
    yield pool, a, b, {a: {"ledger_entries": 3, "deposit_routes": 2, "audit_log": 1},
                       b: {"ledger_entries": 2, "deposit_routes": 1, "audit_log": 2}}
    await pool.close()


async def test_a_tenant_sees_only_its_own_rows_even_without_a_where_clause(tenants):
    pool, a, b, expected = tenants
    for tenant in (a, b):
        async with tenant_transaction(pool, tenant) as conn:
            for table in TENANT_TABLES:
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == expected[tenant][table], table
                assert {r["tenant_id"] for r in await conn.fetch(f"SELECT tenant_id FROM {table}")} == {tenant}
                # Asking for the other tenant by name finds nothing either.
                other = b if tenant == a else a
                assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE tenant_id = $1", other) == 0


async def test_the_stores_tenant_reads_are_isolated(tenants):
    pool, a, b, _ = tenants
    ledger, routes = PostgresLedgerStore(pool), PostgresDepositRoutes(pool)
    assert await ledger.account_balances(a) == {
        "system:PSP_SETTLEMENT:sandbox:EUR": -600, "player:pa:CASH:EUR": 300, "player:pa2:CASH:EUR": 300,
    }
    assert [p.amount_minor for p in await ledger.entries(b, "op1")] == [1000]
    assert await routes.lookup(a, "d1") == "pa"
    assert await routes.lookup(b, "d1") == "pb"
    assert await routes.lookup(b, "d2") is None
    assert [r.audit_id for r in await ledger.audit(b, "pb", 10)] == ["b2", "b1"]


async def test_a_session_with_no_tenant_set_sees_nothing(tenants):
    pool, a, _, _ = tenants
    # Once with the variable never set, and once after a tenant transaction on the same
    # connection has set it locally (it then reads as '' rather than NULL).
    for _ in range(2):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL ROLE bankroll_tenant")
            for table in TENANT_TABLES:
                assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0, table
        async with tenant_transaction(pool, a) as conn:
            assert await conn.fetchval("SELECT count(*) FROM ledger_entries") == 3


async def test_a_tenant_cannot_write_another_tenants_rows(tenants):
    pool, a, b, _ = tenants
    route = "INSERT INTO deposit_routes (tenant_id, deposit_id, player_id) VALUES ($1, 'd9', 'px')"
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with tenant_transaction(pool, a) as conn:
            await conn.execute(route, b)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with tenant_transaction(pool, a) as conn:
            await conn.execute(
                "INSERT INTO audit_log (tenant_id, audit_id, player_id, kind, code, created_at) "
                "VALUES ($1, 'x9', 'px', 'refusal', 'x', now())",
                b,
            )
    # The ledger is written by the system flush only: no tenant may insert into it at all.
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
        async with tenant_transaction(pool, a) as conn:
            await conn.execute(
                "INSERT INTO ledger_entries (tenant_id, operation_id, leg, debit_account, credit_account, "
                "amount_minor, currency, category, created_at) "
                "VALUES ($1, 'x', 0, 'a:EUR', 'b:EUR', 1, 'EUR', 'x', now())",
                a,
            )
    # Its own rows it may insert, so the refusals above are the policy's, not a missing grant.
    async with tenant_transaction(pool, a) as conn:
        await conn.execute(route, a)
    assert await PostgresDepositRoutes(pool).lookup(a, "d9") == "px"
    assert await PostgresDepositRoutes(pool).lookup(b, "d9") is None


async def test_the_connection_leaves_a_tenant_transaction_as_it_entered(tenants):
    pool, a, _, _ = tenants
    async with pool.acquire() as conn:
        own_role = await conn.fetchval("SELECT current_user")
    with pytest.raises(RuntimeError):
        async with tenant_transaction(pool, a) as conn:
            assert await conn.fetchval("SELECT current_user") == "bankroll_tenant"
            assert await conn.fetchval("SELECT current_setting('bankroll.tenant_id')") == a
            raise RuntimeError("the body fails")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT current_user") == own_role
        assert await conn.fetchval("SELECT current_setting('bankroll.tenant_id', true)") in (None, "")
    with pytest.raises(ValueError):
        async with tenant_transaction(pool, ""):
            pass


async def test_the_system_role_still_sees_every_tenant(tenants):
    """The ledger flush writes several tenants' rows in one batch and the reconciliation
    sums them all, with the connection's own role."""
    pool, a, b, expected = tenants
    async with pool.acquire() as conn:
        for table in TENANT_TABLES:
            counts = dict(await conn.fetch(
                f"SELECT tenant_id, count(*) FROM {table} WHERE tenant_id = ANY($1) GROUP BY tenant_id", [a, b]))
            assert counts == {a: expected[a][table], b: expected[b][table]}, table


async def test_a_tenant_id_is_a_literal_in_the_transaction_that_names_it(tenants):
    """The tenant reaches PostgreSQL quoted inside the statement that opens the
    transaction: a quote in it names that tenant, and cannot end the literal; a body that
    raises leaves the pooled connection outside any transaction and back in its own role."""
    pool, a, _, _ = tenants
    quoted = f"o'brien{uuid.uuid4().hex}"
    async with tenant_transaction(pool, quoted) as conn:
        assert await conn.fetchval("SELECT current_setting('bankroll.tenant_id')") == quoted
        assert await conn.fetchval("SELECT count(*) FROM ledger_entries") == 0
    with pytest.raises(ValueError):
        async with tenant_transaction(pool, "a\\b"):
            pass
    with pytest.raises(RuntimeError):
        async with tenant_transaction(pool, a) as conn:
            await conn.fetchval("SELECT 1")
            raise RuntimeError("the body fails")
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT current_user") == await conn.fetchval("SELECT session_user")
