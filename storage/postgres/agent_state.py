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

# The whole batch in one call (migration 0007): records, postings, audit, answers, claims
# and stream positions, refusals raised by SQLSTATE.
_COMMIT_BATCH = "SELECT bankroll_commit_batch(" + ", ".join(f"${i}" for i in range(1, 38)) + ")"
STALE_RECORDS, POSTINGS_STORED, CLAIM_TAKEN = "BR001", "BR002", "BR003"


# What a batch must know before it is decided, in one round trip: the stored answers of
# operations its records' windows no longer hold, and who owns the ids it names.
_ANSWERS_AND_CLAIMS = """
SELECT a.key, NULL::text AS tenant_id, a.operation_key AS name, a.answer, NULL::text AS player_id
FROM operation_answers a JOIN unnest($2::bytea[], $3::text[]) AS w(key, operation_key)
    ON a.key = w.key AND a.operation_key = w.operation_key
WHERE a.agent = $1
UNION ALL
SELECT NULL, r.tenant_id, r.deposit_id, NULL, r.player_id
FROM deposit_routes r JOIN unnest($4::text[], $5::text[]) AS w(tenant_id, route)
    ON r.tenant_id = w.tenant_id AND r.deposit_id = w.route
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
        # Records and claims in key order: two batches locking rows in one order cannot
        # deadlock. The records go first: a batch committed once already (its
        # acknowledgement lost) is refused as stale before its postings could look like a
        # conflict.
        records = _columns([(r.key, r.tenant_id, r.partition, r.version, r.prior_version, r.record)
                            for r in sorted(batch.records, key=lambda r: r.key)], width=6)
        postings = _columns([
            (p.tenant_id, p.operation_id, p.leg, p.debit_account, p.credit_account, p.amount_minor, p.currency,
             p.category, p.reason, p.player_id, ms_to_datetime(p.created_at_ms)) for p in batch.postings], width=11)
        audit = _columns([(a.tenant_id, a.audit_id, a.player_id, a.kind, a.code, json.dumps(a.detail),
                           ms_to_datetime(a.created_at_ms)) for a in batch.audit], width=7)
        answers = _columns([(a.key, a.operation_key, a.tenant_id, a.answer, ms_to_datetime(a.answered_at_ms))
                            for a in batch.answers], width=5)
        claims = _columns(sorted((c.tenant_id, c.route, c.player_id) for c in batch.claims), width=3)
        positions = _columns([(t, p, o) for (t, p), o in batch.positions.items()], width=3)
        try:
            await self._pool.execute(_COMMIT_BATCH, batch.agent, *records, *postings, *audit, *answers, *claims,
                                     batch.consumer, *positions)
        except asyncpg.PostgresError as exc:
            state = getattr(exc, "sqlstate", None)
            if state == STALE_RECORDS:
                raise StaleRecords(batch.agent, [bytes.fromhex(k) for k in (exc.detail or "").split(",") if k]) from None
            if state == POSTINGS_STORED:
                raise _PostingsStoredAlready() from None
            if state == CLAIM_TAKEN:
                raise ClaimTaken([Claim(*taken) for taken in json.loads(exc.detail)]) from None
            raise

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

    async def answers_and_claims(
        self, agent: str, answers: Iterable[tuple[bytes, str]], claims: Iterable[tuple[str, str]],
    ) -> tuple[dict[tuple[bytes, str], bytes], dict[tuple[str, str], str]]:
        answer_pairs, claim_pairs = list(answers), list(claims)
        if not answer_pairs or not claim_pairs:
            return await self.answers(agent, answer_pairs), await self.claims(claim_pairs)
        keys, operations = zip(*answer_pairs)
        tenants, routes = zip(*claim_pairs)
        found_answers: dict[tuple[bytes, str], bytes] = {}
        found_claims: dict[tuple[str, str], str] = {}
        for r in await self._pool.fetch(_ANSWERS_AND_CLAIMS, agent, list(keys), list(operations), list(tenants),
                                        list(routes)):
            if r["answer"] is not None:
                found_answers[(bytes(r["key"]), r["name"])] = bytes(r["answer"])
            else:
                found_claims[(r["tenant_id"], r["name"])] = r["player_id"]
        return found_answers, found_claims

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
