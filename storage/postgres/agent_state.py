"""The agents' state in PostgreSQL (migration 0006): one transaction per batch holding its
postings, audit records, changed records, answers, claims and stream positions.

A system writer, like the ledger flush was: one batch holds several tenants' rows, so it
keeps the connection's own role, which row-level security does not restrict."""
from __future__ import annotations

import json
from typing import Iterable

import asyncpg

from storage.history import ms_to_datetime
from storage.ports import BatchCommit, Claim, ClaimTaken, PostingsConflict, StaleRecords
from storage.postgres.stores import _INSERT_AUDIT, _INSERT_ENTRIES, _UPSERT_POSITIONS

# A record is written over the version its batch decided on, or inserted when the batch
# found none: a row whose version moved on since (another worker owned the key in
# between) is neither updated nor counted, and the batch is refused as a whole.
_WRITE_RECORDS = """
INSERT INTO agent_records AS r (agent, key, tenant_id, partition, version, prior_version, record)
SELECT $1, * FROM unnest($2::bytea[], $3::text[], $4::int4[], $5::int8[], $6::int8[], $7::bytea[])
ON CONFLICT (agent, key) DO UPDATE
SET version = EXCLUDED.version, prior_version = EXCLUDED.prior_version, record = EXCLUDED.record,
    partition = EXCLUDED.partition, updated_at = now()
WHERE r.version = EXCLUDED.prior_version
RETURNING r.key
"""

_INSERT_ANSWERS = """
INSERT INTO operation_answers (agent, key, operation_key, tenant_id, answer, answered_at)
SELECT $1, * FROM unnest($2::bytea[], $3::text[], $4::text[], $5::bytea[], $6::timestamptz[])
ON CONFLICT (agent, key, operation_key) DO NOTHING
"""

_INSERT_CLAIMS = """
INSERT INTO deposit_routes (tenant_id, deposit_id, player_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
ON CONFLICT (tenant_id, deposit_id) DO NOTHING
"""

# A new statement, so it sees claims other transactions committed while the insert
# waited for them.
_FOREIGN_CLAIMS = """
SELECT r.tenant_id, r.deposit_id, r.player_id
FROM deposit_routes r JOIN unnest($1::text[], $2::text[], $3::text[]) AS n(tenant_id, route, player_id)
    ON r.tenant_id = n.tenant_id AND r.deposit_id = n.route
WHERE r.player_id <> n.player_id
"""


class _PostingsStoredAlready(Exception):
    """Inside the transaction: some postings were not inserted (see PostingsConflict)."""


class PostgresAgentStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def commit(self, batch: BatchCommit) -> None:
        try:
            await self._commit(batch)
        except _PostingsStoredAlready:
            # Rolled back: the batch's operations still in the ledger are the earlier ones.
            raise PostingsConflict(await self._stored_operations(batch)) from None

    async def _commit(self, batch: BatchCommit) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # The records first: a batch committed once already (its acknowledgement lost)
            # is refused as stale here, before its postings could look like a conflict.
            if batch.records:
                written = await conn.fetch(_WRITE_RECORDS, batch.agent, *_columns(
                    # In key order, as the claims below: two batches locking rows in one order
                    # cannot deadlock.
                    [(r.key, r.tenant_id, r.partition, r.version, r.prior_version, r.record)
                     for r in sorted(batch.records, key=lambda r: r.key)],
                    width=6))
                if len(written) != len(batch.records):
                    done = {row["key"] for row in written}
                    raise StaleRecords(batch.agent, [r.key for r in batch.records if r.key not in done])
            if batch.postings:
                status = await conn.execute(_INSERT_ENTRIES, *_columns([
                    (p.tenant_id, p.operation_id, p.leg, p.debit_account, p.credit_account, p.amount_minor,
                     p.currency, p.category, p.reason, p.player_id, ms_to_datetime(p.created_at_ms))
                    for p in batch.postings], width=11))
                if int(status.rsplit(" ", 1)[-1]) != len(batch.postings):
                    raise _PostingsStoredAlready()
            if batch.audit:
                await conn.execute(_INSERT_AUDIT, *_columns([
                    (a.tenant_id, a.audit_id, a.player_id, a.kind, a.code, json.dumps(a.detail),
                     ms_to_datetime(a.created_at_ms)) for a in batch.audit], width=7))
            if batch.answers:
                await conn.execute(_INSERT_ANSWERS, batch.agent, *_columns(
                    [(a.key, a.operation_key, a.tenant_id, a.answer, ms_to_datetime(a.answered_at_ms))
                     for a in batch.answers], width=5))
            if batch.claims:
                columns = _columns(sorted((c.tenant_id, c.route, c.player_id) for c in batch.claims), width=3)
                await conn.execute(_INSERT_CLAIMS, *columns)
                foreign = await conn.fetch(_FOREIGN_CLAIMS, *columns)
                if foreign:
                    raise ClaimTaken([Claim(r["tenant_id"], r["deposit_id"], r["player_id"]) for r in foreign])
            if batch.positions:
                topics, partitions, offsets = zip(*((t, p, o) for (t, p), o in batch.positions.items()))
                await conn.execute(_UPSERT_POSITIONS, batch.consumer, list(topics), list(partitions), list(offsets))

    async def _stored_operations(self, batch: BatchCommit) -> list[tuple[str, str]]:
        """The batch's (tenant, operation id) pairs that are in the ledger."""
        pairs = sorted({(p.tenant_id, p.operation_id) for p in batch.postings})
        rows = await self._pool.fetch(
            """
            SELECT DISTINCT e.tenant_id, e.operation_id FROM ledger_entries e
            JOIN unnest($1::text[], $2::text[]) AS w(tenant_id, operation_id)
                ON e.tenant_id = w.tenant_id AND e.operation_id = w.operation_id
            """, [t for t, _ in pairs], [o for _, o in pairs])
        return [(r["tenant_id"], r["operation_id"]) for r in rows]

    async def records(self, agent: str, partitions: Iterable[int]) -> list[tuple[bytes, int, bytes]]:
        rows = await self._pool.fetch(
            "SELECT key, version, record FROM agent_records WHERE agent = $1 AND partition = ANY($2::int4[])",
            agent, list(partitions))
        return [(bytes(r["key"]), r["version"], bytes(r["record"])) for r in rows]

    async def records_of(self, agent: str, keys: Iterable[bytes]) -> dict[bytes, tuple[int, bytes]]:
        rows = await self._pool.fetch(
            "SELECT key, version, record FROM agent_records WHERE agent = $1 AND key = ANY($2::bytea[])",
            agent, list(keys))
        return {bytes(r["key"]): (r["version"], bytes(r["record"])) for r in rows}

    async def answers(self, agent: str, wanted: Iterable[tuple[bytes, str]]) -> dict[tuple[bytes, str], bytes]:
        pairs = list(wanted)
        if not pairs:
            return {}
        keys, operations = zip(*pairs)
        rows = await self._pool.fetch(
            """
            SELECT a.key, a.operation_key, a.answer FROM operation_answers a
            JOIN unnest($2::bytea[], $3::text[]) AS w(key, operation_key)
                ON a.key = w.key AND a.operation_key = w.operation_key
            WHERE a.agent = $1
            """, agent, list(keys), list(operations))
        return {(bytes(r["key"]), r["operation_key"]): bytes(r["answer"]) for r in rows}

    async def claims(self, wanted: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
        pairs = list(wanted)
        if not pairs:
            return {}
        tenants, routes = zip(*pairs)
        rows = await self._pool.fetch(
            """
            SELECT r.tenant_id, r.deposit_id, r.player_id FROM deposit_routes r
            JOIN unnest($1::text[], $2::text[]) AS w(tenant_id, route)
                ON r.tenant_id = w.tenant_id AND r.deposit_id = w.route
            """, list(tenants), list(routes))
        return {(r["tenant_id"], r["deposit_id"]): r["player_id"] for r in rows}

    async def prune_answers(self, answered_before_ms: int, limit: int) -> int:
        status = await self._pool.execute(
            """
            DELETE FROM operation_answers WHERE ctid IN (
                SELECT ctid FROM operation_answers WHERE answered_at < $1 LIMIT $2)
            """, ms_to_datetime(answered_before_ms), limit)
        return int(status.rsplit(" ", 1)[-1])


def _columns(rows: Iterable[tuple], *, width: int) -> list[list]:
    columns: list[list] = [[] for _ in range(width)]
    for row in rows:
        for i, value in enumerate(row):
            columns[i].append(value)
    return columns
