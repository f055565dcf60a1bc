"""One suite, every adapter: the in-memory stores must behave as PostgreSQL and Redis do."""
from __future__ import annotations

import json
import uuid
from dataclasses import replace

import asyncpg
import pytest
import redis.asyncio as aioredis

from app.domain.audit import AuditRecord
from app.domain.jackpot.chain import append as chain_append
from app.domain.jackpot.core import chain_audit_record
from app.domain.ledger import Posting, check_deltas_balance
from storage.history import encode_cursor
from storage.memory.stores import (
    MemoryAgentStore, MemoryDepositRoutes, MemoryLedgerStore, MemoryPoolCache, MemorySignatureGuard, MemoryWalletCache,
)
from storage.ports import AnswerWrite, BatchCommit, Claim, ClaimTaken, PostingsConflict, RecordWrite, StaleRecords
from storage.postgres.agent_state import PostgresAgentStore
from storage.postgres.migrate import migrate
from storage.postgres.stores import PostgresDepositRoutes, PostgresLedgerStore
from storage.redis.stores import RedisPoolCache, RedisSignatureGuard, RedisWalletCache

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


@pytest.fixture(params=["memory", "redis"])
async def pool_cache(request, stack):
    if request.param == "memory":
        yield MemoryPoolCache()
        return
    client = aioredis.Redis.from_url(stack.env["REDIS_URL"])
    yield RedisPoolCache(client)
    await client.aclose()


async def test_pool_cache_keeps_the_newest_version_and_lists_a_tenants_pools(pool_cache):
    tenant, other = f"t-{uuid.uuid4().hex[:8]}", f"o-{uuid.uuid4().hex[:8]}"
    assert await pool_cache.get(tenant, "grand") is None
    assert await pool_cache.list(tenant) == []
    assert await pool_cache.put(tenant, "grand", 3, json.dumps({"pool_id": "grand", "version": 3}), 30)
    assert not await pool_cache.put(tenant, "grand", 2, json.dumps({"pool_id": "grand", "version": 2}), 30)
    assert await pool_cache.put(tenant, "alpha", 1, json.dumps({"pool_id": "alpha", "version": 1}), 30)
    assert await pool_cache.put(other, "zeta", 1, json.dumps({"pool_id": "zeta", "version": 1}), 30)
    assert json.loads(await pool_cache.get(tenant, "grand"))["version"] == 3
    assert [json.loads(v)["pool_id"] for v in await pool_cache.list(tenant)] == ["alpha", "grand"]
    assert [json.loads(v)["pool_id"] for v in await pool_cache.list(other)] == ["zeta"]


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


@pytest.mark.parametrize("table, column", [("ledger_entries", "amount_minor"), ("audit_log", "code")])
async def test_ledger_and_audit_rows_cannot_be_changed_or_removed(stack, table, column):
    await migrate(stack.env["DATABASE_URL"])
    conn = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        for statement in (f"UPDATE {table} SET {column} = {column}", f"DELETE FROM {table}", f"TRUNCATE {table}"):
            with pytest.raises(asyncpg.RaiseError, match="append-only"):
                await conn.execute(statement)
    finally:
        await conn.close()


def record(tenant: str, audit_id: str, created_at_ms: int, player: str = "p1", **detail) -> AuditRecord:
    return AuditRecord(tenant, audit_id, player, "refusal", "deposit_limit_exceeded", created_at_ms,
                       detail or {"limit": 10_000, "attempted": 12_050, "period": "day"})


async def test_audit_records_are_stored_with_the_batch_once(pg_adapters):
    ledger, _ = pg_adapters
    tenant = f"t{uuid.uuid4().hex}"
    consumer = f"c{uuid.uuid4().hex}"
    first = [record(tenant, "a1", 1_700_000_000_100), record(tenant, "a2", 1_700_000_000_300)]
    assert await ledger.append(legs(tenant, "op1"), {("ledger.postings", 0): 1}, consumer, audit=first) == 2
    # A redelivered batch stores nothing twice, even when a record's content differs.
    again = [record(tenant, "a1", 1_700_000_000_100, note="changed"), record(tenant, "a3", 1_700_000_000_200)]
    assert await ledger.append(legs(tenant, "op1"), {("ledger.postings", 0): 2}, consumer, audit=again) == 0
    # Audit records alone, with no postings, are stored too.
    assert await ledger.append([], {}, consumer, audit=[record(tenant, "b1", 1_700_000_000_050, player="p2")]) == 0

    assert [r.audit_id for r in await ledger.audit(tenant, "p1", 10)] == ["a2", "a3", "a1"]
    assert await ledger.audit(tenant, "p1", 2) == [first[1], again[1]]
    assert await ledger.audit(tenant, "p2", 10) == [record(tenant, "b1", 1_700_000_000_050, player="p2")]
    assert await ledger.audit(tenant, "nobody", 10) == []
    assert await ledger.audit(f"other{tenant}", "p1", 10) == []
    assert await ledger.positions(consumer) == {("ledger.postings", 0): 2}
    with pytest.raises(ValueError):
        await ledger.audit(tenant, "p1", 0)


async def test_audit_records_with_equal_times_list_newest_stored_first(pg_adapters):
    ledger, _ = pg_adapters
    tenant = f"t{uuid.uuid4().hex}"
    for audit_id in ("x", "y", "z"):
        await ledger.append([], {}, "c", audit=[record(tenant, audit_id, 1_700_000_000_000)])
    assert [r.audit_id for r in await ledger.audit(tenant, "p1", 10)] == ["z", "y", "x"]


def pool_chain(tenant: str, pool_id: str, n: int) -> list[AuditRecord]:
    entries: tuple = ()
    for i in range(n):
        entries = chain_append(entries, "seed" if i % 2 else "config_changed", {"pool_id": pool_id, "i": i})
    return [chain_audit_record(tenant, pool_id, entry, 1_700_000_000_000 + entry.seq) for entry in entries]


async def test_chain_records_read_a_pools_entries_back_in_seq_order(pg_adapters):
    ledger, _ = pg_adapters
    tenant = f"t{uuid.uuid4().hex}"
    # Twelve entries, so seq 10 and 11 must sort as numbers, after 9; "grand2" and "gran"
    # begin like "grand" and must not be read with it.
    grand, mini = pool_chain(tenant, "grand", 12), pool_chain(tenant, "mini", 3)
    grand2, gran = pool_chain(tenant, "grand2", 2), pool_chain(tenant, "gran", 1)
    # Stored in several batches and out of order, among other kinds of record (one even
    # naming the pool), as concurrent flushes and redeliveries would store them.
    await ledger.append([], {}, "c", audit=grand[10:] + mini[1:] + grand2)
    await ledger.append([], {}, "c", audit=[record(tenant, "a1", 1_700_000_000_000, pool_id="grand")]
                        + grand[:10][::-1] + mini[:1] + grand[:2] + gran)
    await ledger.append([], {}, "c", audit=pool_chain(f"other{tenant}", "grand", 2))

    assert await ledger.chain_records(tenant, "grand") == grand
    assert await ledger.chain_records(tenant, "mini") == mini
    assert await ledger.chain_records(tenant, "grand2") == grand2
    assert await ledger.chain_records(tenant, "nowhere") == []
    assert await ledger.chain_records(f"other{tenant}", "mini") == []
    assert [r.audit_id for r in await ledger.chain_records(f"other{tenant}", "grand")] == [
        "jp:grand:chain:0", "jp:grand:chain:1"]
    assert await ledger.chain_pools(tenant) == ["gran", "grand", "grand2", "mini"]
    assert await ledger.chain_pools(f"other{tenant}") == ["grand"]
    assert await ledger.chain_pools(f"none{tenant}") == []


async def test_chain_records_are_read_by_audit_id_whatever_their_detail_says(pg_adapters):
    ledger, _ = pg_adapters
    tenant = f"t{uuid.uuid4().hex}"
    chain = pool_chain(tenant, "p", 3)
    text_seq = replace(chain[0], audit_id="jp:p:chain:text", detail={**chain[0].detail, "seq": "0"})
    no_seq = replace(chain[0], audit_id="jp:p:chain:none", detail={k: v for k, v in chain[0].detail.items() if k != "seq"})
    repeated = replace(chain[1], audit_id="jp:p:chain:again", detail={**chain[1].detail, "payload": {"forged": True}})
    elsewhere = replace(chain[2], audit_id="jp:p:chain:moved", detail={**chain[2].detail, "pool_id": "q"})
    renamed = replace(chain[2], audit_id="refusal-9")
    # One batch each, so the storage order that breaks the tie of seq 1 is this order.
    for r in (text_seq, chain[2], repeated, no_seq, chain[1], elsewhere, chain[0], renamed):
        await ledger.append([], {}, "c", audit=[r])
    assert [r.audit_id for r in await ledger.chain_records(tenant, "p")] == [
        "jp:p:chain:0", "jp:p:chain:again", "jp:p:chain:1", "jp:p:chain:2", "jp:p:chain:moved",
        "jp:p:chain:text", "jp:p:chain:none"]
    assert await ledger.chain_pools(tenant) == ["p"]


def player_leg(tenant: str, op: str, player: str, amount: int, leg: int = 0, at_ms: int = 1_700_000_000_123) -> Posting:
    return Posting(tenant, op, leg, "system:PSP_SETTLEMENT:sandbox:EUR", f"player:{player}:CASH:EUR", amount, "EUR",
                   "deposit", at_ms, f"psp sandbox event {op}", player)


async def test_history_pages_newest_first_without_gaps_or_repeats(pg_adapters):
    ledger, _ = pg_adapters
    tenant = f"t{uuid.uuid4().hex}"
    for i in range(25):
        # Another player's and another tenant's legs interleave with the player's own.
        op = f"op{i:02d}"
        await ledger.append([player_leg(tenant, op, "p1", 100 + i), player_leg(tenant, op, "p2", 1, leg=1)], {}, "c")
        await ledger.append([player_leg(f"other{tenant}", op, "p1", 5)], {}, "c")

    pages, cursor = [], None
    while True:
        page, cursor = await ledger.history(tenant, "p1", cursor, 10)
        pages.append(page)
        if cursor is None:
            break
    assert [len(page) for page in pages] == [10, 10, 5]
    rows = [row for page in pages for row in page]
    assert [row["operation_id"] for row in rows] == [f"op{i:02d}" for i in reversed(range(25))]
    assert [row["amount_minor"] for row in rows] == [100 + i for i in reversed(range(25))]
    entry_ids = [row["entry_id"] for row in rows]
    assert entry_ids == sorted(set(entry_ids), reverse=True)


async def test_history_row_shape_and_last_page(pg_adapters):
    ledger, _ = pg_adapters
    tenant = f"t{uuid.uuid4().hex}"
    await ledger.append(legs(tenant, "op1"), {}, "c")
    page, cursor = await ledger.history(tenant, "p1", None, 2)
    assert cursor is None  # exactly a full page, and nothing after it
    assert [{k: v for k, v in row.items() if k != "entry_id"} for row in page] == [
        {"operation_id": "op1", "leg": 1, "debit_account": "player:p1:CASH:EUR",
         "credit_account": "system:PSP_FEES:sandbox:EUR", "amount_minor": 10, "currency": "EUR",
         "category": "deposit_fee", "reason": "psp sandbox event e1", "created_at": "2023-11-14T22:13:20.123Z"},
        {"operation_id": "op1", "leg": 0, "debit_account": "system:PSP_SETTLEMENT:sandbox:EUR",
         "credit_account": "player:p1:CASH:EUR", "amount_minor": 100, "currency": "EUR",
         "category": "deposit", "reason": "psp sandbox event e1", "created_at": "2023-11-14T22:13:20.123Z"},
    ]
    assert all(isinstance(row["entry_id"], int) for row in page)
    first, cursor = await ledger.history(tenant, "p1", None, 1)
    assert first == page[:1] and cursor is not None
    assert await ledger.history(tenant, "p1", cursor, 1) == (page[1:], None)
    assert await ledger.history(tenant, "nobody", None, 10) == ([], None)
    assert await ledger.history(f"other{tenant}", "p1", None, 10) == ([], None)


# Padded, negative, zero-led, not a number, beyond bigint, trailing junk: none is a cursor
# the store made ("MTA" is the cursor of entry 10).
@pytest.mark.parametrize("cursor", ["", "!!!", "not base64", "MTA=", "LTU", "MDE", "YWJj", encode_cursor(2**63),
                                    "MTA\n", "MTA.", 42])
async def test_history_refuses_a_malformed_cursor(pg_adapters, cursor):
    ledger, _ = pg_adapters
    with pytest.raises(ValueError):
        await ledger.history("t", "p1", cursor, 10)


async def test_history_refuses_a_limit_below_one(pg_adapters):
    ledger, _ = pg_adapters
    with pytest.raises(ValueError):
        await ledger.history("t", "p1", None, 0)


async def test_ledger_totals_cover_every_tenant(pg_adapters):
    ledger, _ = pg_adapters
    a, b = f"a{uuid.uuid4().hex}", f"b{uuid.uuid4().hex}"
    await ledger.append(legs(a, "op1") + legs(b, "op1", amount=70, fee=5), {}, "c")
    totals = {key: value for key, value in (await ledger.ledger_totals()).items() if key[0] in (a, b)}
    assert totals == {
        (a, "system:PSP_SETTLEMENT:sandbox:EUR"): (-100, 100),
        (a, "player:p1:CASH:EUR"): (90, 110),
        (a, "system:PSP_FEES:sandbox:EUR"): (10, 10),
        (b, "system:PSP_SETTLEMENT:sandbox:EUR"): (-70, 70),
        (b, "player:p1:CASH:EUR"): (65, 75),
        (b, "system:PSP_FEES:sandbox:EUR"): (5, 5),
    }


# ---------------------------------------------------------------- the agents' batch commit

@pytest.fixture(params=["memory", "postgres"])
async def agent_stores(request, stack):
    """(agent store, ledger store reading what it committed)."""
    if request.param == "memory":
        store = MemoryAgentStore()
        yield store, store.ledger
        return
    dsn = stack.env["DATABASE_URL"]
    await migrate(dsn)
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    yield PostgresAgentStore(pool), PostgresLedgerStore(pool)
    await pool.close()


def a_batch(tenant: str, consumer: str, op: str, *, key: bytes, prior: int, version: int, claim: str,
            player: str = "p1", offset: int = 10) -> BatchCommit:
    return BatchCommit(
        agent="contract", consumer=consumer, postings=legs(tenant, op),
        audit=[record(tenant, f"{op}:audit", 1_700_000_000_000)],
        records=[RecordWrite(key, tenant, 0, prior, version, f"{op}@{version}".encode())],
        answers=[AnswerWrite(key, op, tenant, f"answer of {op}".encode(), 1_700_000_000_000)],
        claims=[Claim(tenant, claim, player)], positions={("contract.topic", 0): offset},
    )


async def stored(store, ledger, tenant: str, consumer: str, key: bytes, op: str, claim: str) -> tuple:
    return (await store.records_of("contract", [key]), await store.answers("contract", [(key, op)]),
            await store.claims([(tenant, claim)]), len(await ledger.entries(tenant, op)),
            await ledger.positions(consumer))


async def test_a_batch_is_stored_whole_and_each_refusal_stores_nothing(agent_stores):
    store, ledger = agent_stores
    tenant, consumer = f"t-{uuid.uuid4().hex[:8]}", f"c-{uuid.uuid4().hex[:8]}"
    key = f"{tenant}|p1".encode()
    await store.commit(a_batch(tenant, consumer, "op1", key=key, prior=0, version=1, claim="bet:b1"))
    assert await stored(store, ledger, tenant, consumer, key, "op1", "bet:b1") == (
        {key: (1, b"op1@1")}, {(key, "op1"): b"answer of op1"}, {(tenant, "bet:b1"): "p1"}, 2,
        {("contract.topic", 0): 10})

    # What a batch reads before it is decided, at once: only what exists.
    assert await store.answers_and_claims("contract", [(key, "op1"), (key, "op9")],
                                          [(tenant, "bet:b1"), (tenant, "bet:b9")]) == (
        {(key, "op1"): b"answer of op1"}, {(tenant, "bet:b1"): "p1"})
    assert await store.answers_and_claims("contract", [(key, "op1")], []) == ({(key, "op1"): b"answer of op1"}, {})
    assert await store.answers_and_claims("contract", [], [(tenant, "bet:b1")]) == ({}, {(tenant, "bet:b1"): "p1"})

    # The same batch again (its acknowledgement lost): the record moved on, so it is stale,
    # which is found before its postings could look like a conflict.
    with pytest.raises(StaleRecords) as stale:
        await store.commit(a_batch(tenant, consumer, "op1", key=key, prior=0, version=1, claim="bet:b1"))
    assert stale.value.keys == [key]

    # A new operation whose posting the ledger holds already (op1's legs under op2's
    # record): refused with the operation's id, and none of op2 is stored.
    clash = a_batch(tenant, consumer, "op2", key=key, prior=1, version=2, claim="bet:b2", offset=20)
    clash.postings = legs(tenant, "op1")
    with pytest.raises(PostingsConflict) as conflict:
        await store.commit(clash)
    assert conflict.value.operations == {(tenant, "op1")}

    # An id another player holds: refused with the holder, and none of it is stored.
    other = f"{tenant}|p2".encode()
    with pytest.raises(ClaimTaken) as taken:
        await store.commit(a_batch(tenant, consumer, "op3", key=other, prior=0, version=1, claim="bet:b1",
                                   player="p2", offset=30))
    assert taken.value.claims == [Claim(tenant, "bet:b1", "p1")]

    for refused_key, op, claim in ((key, "op2", "bet:b2"), (other, "op3", "bet:b1")):
        records, answers, claims, entries, positions = await stored(store, ledger, tenant, consumer, refused_key,
                                                                    op, claim)
        assert answers == {} and positions == {("contract.topic", 0): 10}
        assert records == ({key: (1, b"op1@1")} if refused_key == key else {})
        assert entries == 0
    assert await store.claims([(tenant, "bet:b2")]) == {}

    # The refused batch, decided again over the stored version, goes through.
    await store.commit(a_batch(tenant, consumer, "op2", key=key, prior=1, version=2, claim="bet:b2", offset=20))
    assert (await store.records_of("contract", [key]))[key] == (2, b"op2@2")
    assert await ledger.positions(consumer) == {("contract.topic", 0): 20}
