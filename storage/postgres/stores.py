"""PostgreSQL adapters (asyncpg)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Sequence

import asyncpg

from app.domain.ledger import Posting
from storage.ports import Positions

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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Bankroll's queries leave no session state behind, so the pool's default reset on
    every release (UNLISTEN, RESET ALL, advisory unlock) is pure overhead."""


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, reset=_keep_session)


def _ms_to_dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _dt_to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


class PostgresLedgerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def append(self, postings: Sequence[Posting], positions: Positions, consumer: str) -> int:
        columns: list[list] = [[] for _ in range(11)]
        for p in postings:
            for i, value in enumerate(
                (p.tenant_id, p.operation_id, p.leg, p.debit_account, p.credit_account, p.amount_minor,
                 p.currency, p.category, p.reason, p.player_id, _ms_to_dt(p.created_at_ms))
            ):
                columns[i].append(value)
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.execute(_INSERT_ENTRIES, *columns) if postings else "INSERT 0 0"
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
        rows = await self._pool.fetch(
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
        rows = await self._pool.fetch(
            "SELECT * FROM ledger_entries WHERE tenant_id = $1 AND operation_id = $2 ORDER BY leg",
            tenant_id,
            operation_id,
        )
        return [
            Posting(
                tenant_id=r["tenant_id"], operation_id=r["operation_id"], leg=r["leg"],
                debit_account=r["debit_account"], credit_account=r["credit_account"],
                amount_minor=r["amount_minor"], currency=r["currency"], category=r["category"],
                created_at_ms=_dt_to_ms(r["created_at"]), reason=r["reason"], player_id=r["player_id"],
            )
            for r in rows
        ]


class PostgresDepositRoutes:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def claim(self, tenant_id: str, deposit_id: str, player_id: str) -> str:
        # The no-op DO UPDATE makes RETURNING yield the existing row on conflict.
        return await self._pool.fetchval(
            """
            INSERT INTO deposit_routes (tenant_id, deposit_id, player_id) VALUES ($1, $2, $3)
            ON CONFLICT (tenant_id, deposit_id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id
            RETURNING player_id
            """,
            tenant_id,
            deposit_id,
            player_id,
        )

    async def lookup(self, tenant_id: str, deposit_id: str) -> str | None:
        return await self._pool.fetchval(
            "SELECT player_id FROM deposit_routes WHERE tenant_id = $1 AND deposit_id = $2", tenant_id, deposit_id
        )
