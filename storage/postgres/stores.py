"""PostgreSQL adapters (asyncpg).

Tenant-facing reads and writes run inside `tenant_transaction`, as the role
bankroll_tenant with the tenant set, so row-level security (migration 0002) decides which
rows they see, whatever their WHERE clause says. The system writers and readers (the
ledger flush, the reconciliation, the stream positions) keep the connection's own role."""
from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import AsyncIterator, Sequence

import asyncpg

from app.domain.audit import AuditRecord
from app.domain.ledger import Posting
from storage.history import (
    check_limit, datetime_to_ms, decode_cursor, encode_cursor, history_row, ms_to_datetime,
)
from storage.ports import CHAIN_AUDIT_POOL_PATTERN, Positions, chain_audit_prefix

# The role of migration 0002 that row-level security applies to.
TENANT_ROLE = "bankroll_tenant"

_INSERT_ENTRIES = """
INSERT INTO ledger_entries (tenant_id, operation_id, leg, debit_account, credit_account,
                            amount_minor, currency, category, reason, player_id, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::int2[], $4::text[], $5::text[],
                     $6::int8[], $7::text[], $8::text[], $9::text[], $10::text[], $11::timestamptz[])
ON CONFLICT ON CONSTRAINT ledger_entries_operation_leg DO NOTHING
"""

_UPSERT_POSITIONS = """
INSERT INTO stream_positions (consumer, topic, partition, next_offset)
SELECT $1, * FROM unnest($2::text[], $3::int4[], $4::int8[])
ON CONFLICT (consumer, topic, partition) DO UPDATE
SET next_offset = GREATEST(stream_positions.next_offset, EXCLUDED.next_offset), updated_at = now()
"""

_INSERT_AUDIT = """
INSERT INTO audit_log (tenant_id, audit_id, player_id, kind, code, detail, created_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::timestamptz[])
ON CONFLICT (tenant_id, audit_id) DO NOTHING
"""

# A pool's chain entries in seq order. Under row-level security PostgreSQL evaluates no
# operator that is not leakproof (->> is not) ahead of the tenant policy, so it cannot
# serve as an index condition; the pool is therefore selected by a range of audit_ids in
# byte order (text comparisons are leakproof), which the index of migration 0004 serves:
# in the "C" collation the ids from 'jp:{pool}:chain:' up to, not including,
# 'jp:{pool}:chain;' are exactly those that begin with the first. The seq is compared as a
# number only when it is one, so a record whose seq was tampered into text is listed
# (last) instead of making the cast fail; storage order breaks ties, so a repeated seq
# lists both records.
_CHAIN_RECORDS = """
SELECT tenant_id, audit_id, player_id, kind, code, detail, created_at FROM audit_log
WHERE tenant_id = $1 AND kind = 'jp_chain' AND audit_id COLLATE "C" >= $2 AND audit_id COLLATE "C" < $3
ORDER BY CASE WHEN jsonb_typeof(detail->'seq') = 'number' THEN (detail->>'seq')::numeric END NULLS LAST,
         audit_seq
"""

_CHAIN_POOLS = """
SELECT DISTINCT substring(audit_id from $2) AS pool_id FROM audit_log
WHERE tenant_id = $1 AND kind = 'jp_chain' AND substring(audit_id from $2) IS NOT NULL
ORDER BY 1
"""

# Balance (credits minus debits) and turnover per account over every tenant: the
# reconciliation's system read.
LEDGER_TOTALS = """
SELECT tenant_id, account, sum(delta)::bigint AS balance, sum(abs(delta))::bigint AS turnover FROM (
    SELECT tenant_id, credit_account AS account, amount_minor AS delta FROM ledger_entries
    UNION ALL
    SELECT tenant_id, debit_account, -amount_minor FROM ledger_entries
) legs GROUP BY tenant_id, account
"""

# One row more than the page, to know whether another page follows without a count.
_HISTORY = """
SELECT entry_id, tenant_id, operation_id, leg, debit_account, credit_account, amount_minor, currency, category,
       reason, player_id, created_at
FROM ledger_entries
WHERE tenant_id = $1 AND player_id = $2 AND ($3::bigint IS NULL OR entry_id < $3)
ORDER BY entry_id DESC
LIMIT $4
"""


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Bankroll's queries leave no session state behind, so the pool's default reset on
    every release (UNLISTEN, RESET ALL, advisory unlock) is pure overhead."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=_keep_session)


@asynccontextmanager
async def tenant_transaction(pool: asyncpg.Pool, tenant_id: str) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on one pooled connection that sees and writes only `tenant_id`'s rows.

    SET LOCAL ROLE drops the connection's own (possibly superuser) role for the
    transaction, so the tenant policies apply; set_config(..., true) names the tenant for
    the transaction only. Both end with the transaction, so the connection goes back to
    the pool as it came, even when the body raises: the pool rolls back a connection
    released inside a transaction.

    The three statements that open it go in one round trip (a simple query, hence the
    tenant as a quoted literal): on the API's hot paths the round trips, not the queries,
    are what PostgreSQL and the web process spend their time on."""
    # No backslash either, so the literal means the same whatever standard_conforming_strings says.
    if not isinstance(tenant_id, str) or not tenant_id or "\x00" in tenant_id or "\\" in tenant_id:
        raise ValueError(f"tenant_transaction needs a tenant id, got {tenant_id!r}")
    literal = "'" + tenant_id.replace("'", "''") + "'"
    async with pool.acquire() as conn:
        await conn.execute(f"BEGIN; SET LOCAL ROLE {TENANT_ROLE}; "
                           f"SELECT set_config('bankroll.tenant_id', {literal}, true)")
        yield conn
        await conn.execute("COMMIT")


def _posting(r: asyncpg.Record) -> Posting:
    return Posting(
        tenant_id=r["tenant_id"], operation_id=r["operation_id"], leg=r["leg"],
        debit_account=r["debit_account"], credit_account=r["credit_account"],
        amount_minor=r["amount_minor"], currency=r["currency"], category=r["category"],
        created_at_ms=datetime_to_ms(r["created_at"]), reason=r["reason"], player_id=r["player_id"],
    )


def _next_after(prefix: str) -> str:
    """The least string, in byte order, above every string that begins with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _audit_record(r: asyncpg.Record) -> AuditRecord:
    return AuditRecord(
        tenant_id=r["tenant_id"], audit_id=r["audit_id"], player_id=r["player_id"], kind=r["kind"],
        code=r["code"], created_at_ms=datetime_to_ms(r["created_at"]), detail=json.loads(r["detail"]),
    )


class PostgresLedgerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(
        self, postings: Sequence[Posting], positions: Positions, consumer: str, audit: Sequence[AuditRecord] = ()
    ) -> int:
        columns: list[list] = [[] for _ in range(11)]
        for p in postings:
            for i, value in enumerate(
                (p.tenant_id, p.operation_id, p.leg, p.debit_account, p.credit_account, p.amount_minor,
                 p.currency, p.category, p.reason, p.player_id, ms_to_datetime(p.created_at_ms))
            ):
                columns[i].append(value)
        audit_columns: list[list] = [[] for _ in range(7)]
        for a in audit:
            for i, value in enumerate(
                (a.tenant_id, a.audit_id, a.player_id, a.kind, a.code, json.dumps(a.detail),
                 ms_to_datetime(a.created_at_ms))
            ):
                audit_columns[i].append(value)
        # The system writer: one batch holds several tenants' rows, so it keeps the
        # connection's own role, which row-level security does not restrict.
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(_INSERT_ENTRIES, *columns) if postings else "INSERT 0 0"
            if audit:
                await conn.execute(_INSERT_AUDIT, *audit_columns)
            if positions:
                topics, partitions, offsets = zip(*((t, p, o) for (t, p), o in positions.items()))
                await conn.execute(_UPSERT_POSITIONS, consumer, list(topics), list(partitions), list(offsets))
        return int(status.rsplit(" ", 1)[-1])

    async def positions(self, consumer: str) -> dict[tuple[str, int], int]:
        rows = await self._pool.fetch(
            "SELECT topic, partition, next_offset FROM stream_positions WHERE consumer = $1", consumer
        )
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def account_balances(self, tenant_id: str) -> dict[str, int]:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            rows = await conn.fetch(
                """
                SELECT account, sum(delta)::bigint AS balance FROM (
                    SELECT credit_account AS account, amount_minor AS delta FROM ledger_entries WHERE tenant_id = $1
                    UNION ALL
                    SELECT debit_account, -amount_minor FROM ledger_entries WHERE tenant_id = $1
                ) legs GROUP BY account
                """,
                tenant_id,
            )
        return {r["account"]: r["balance"] for r in rows}

    async def entries(self, tenant_id: str, operation_id: str) -> list[Posting]:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            rows = await conn.fetch(
                "SELECT * FROM ledger_entries WHERE tenant_id = $1 AND operation_id = $2 ORDER BY leg",
                tenant_id,
                operation_id,
            )
        return [_posting(r) for r in rows]

    async def history(
        self, tenant_id: str, player_id: str, cursor: str | None, limit: int
    ) -> tuple[list[dict], str | None]:
        before = None if cursor is None else decode_cursor(cursor)
        check_limit(limit)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            rows = await conn.fetch(_HISTORY, tenant_id, player_id, before, limit + 1)
        page = rows[:limit]
        next_cursor = encode_cursor(page[-1]["entry_id"]) if len(rows) > limit else None
        return [history_row(r["entry_id"], _posting(r)) for r in page], next_cursor

    async def audit(self, tenant_id: str, player_id: str, limit: int) -> list[AuditRecord]:
        check_limit(limit)
        async with tenant_transaction(self._pool, tenant_id) as conn:
            rows = await conn.fetch(
                """
                SELECT tenant_id, audit_id, player_id, kind, code, detail, created_at FROM audit_log
                WHERE tenant_id = $1 AND player_id = $2
                ORDER BY created_at DESC, audit_seq DESC
                LIMIT $3
                """,
                tenant_id,
                player_id,
                limit,
            )
        return [_audit_record(r) for r in rows]

    async def chain_records(self, tenant_id: str, pool_id: str) -> list[AuditRecord]:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            prefix = chain_audit_prefix(pool_id)
            rows = await conn.fetch(_CHAIN_RECORDS, tenant_id, prefix, _next_after(prefix))
        return [_audit_record(r) for r in rows]

    async def chain_pools(self, tenant_id: str) -> list[str]:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            rows = await conn.fetch(_CHAIN_POOLS, tenant_id, CHAIN_AUDIT_POOL_PATTERN)
        return [r["pool_id"] for r in rows]

    async def ledger_totals(self) -> dict[tuple[str, str], tuple[int, int]]:
        # A system read across every tenant (the reconciliation), so not a tenant transaction.
        rows = await self._pool.fetch(LEDGER_TOTALS)
        return {(r["tenant_id"], r["account"]): (r["balance"], r["turnover"]) for r in rows}


class PostgresDepositRoutes:
    """Both calls act for one tenant (the API's signed key or PSP names it), so both run
    in a tenant transaction, where bankroll_tenant may read and insert but not update."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def claim(self, tenant_id: str, deposit_id: str, player_id: str) -> str:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            claimed = await conn.fetchval(
                """
                INSERT INTO deposit_routes (tenant_id, deposit_id, player_id) VALUES ($1, $2, $3)
                ON CONFLICT (tenant_id, deposit_id) DO NOTHING
                RETURNING player_id
                """,
                tenant_id,
                deposit_id,
                player_id,
            )
            if claimed is not None:
                return claimed
            # The route exists. A concurrent claim makes the INSERT wait until it commits,
            # and this statement's fresh snapshot (READ COMMITTED) then sees its row.
            return await conn.fetchval(
                "SELECT player_id FROM deposit_routes WHERE tenant_id = $1 AND deposit_id = $2", tenant_id, deposit_id
            )

    async def lookup(self, tenant_id: str, deposit_id: str) -> str | None:
        async with tenant_transaction(self._pool, tenant_id) as conn:
            return await conn.fetchval(
                "SELECT player_id FROM deposit_routes WHERE tenant_id = $1 AND deposit_id = $2", tenant_id, deposit_id
            )
