"""What the agents of one worker share while it runs: its connections (Redis, PostgreSQL),
the buffer their snapshots and replies leave through, the producer, the agent store, the
partitions the worker owns, the loop that feeds a batched agent from its inbox, the
restore of a table from PostgreSQL, and the worker's own heartbeat.

Each agent module registers its agent, its table's restore and its timer on a `Worker`
(`register` in agents/wallet.py, agents/jackpot.py and agents/ledger_flush.py);
agents/worker.py only assembles them."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

import asyncpg
import redis.asyncio as aioredis

from agents.batch import FaustRecordTable, Message, RecordTable, partition_of, read_durably
from app.streaming import BankrollApp, Inbox, Streams
from app.topics import WALLET_COMMANDS, topic_name
from config import Settings
from storage.postgres.agent_state import PostgresAgentStore
from storage.postgres.migrate import migrate
from storage.postgres.stores import PostgresLedgerStore, create_pool
from storage.ports import AgentStore, LedgerStore
from storage.redis.stores import RedisPoolCache, RedisWalletCache, connect as connect_redis, worker_key_prefix

log = logging.getLogger("bankroll.worker")

WORKER_HEARTBEAT_TTL_S = 5
# Stored answers past the retention period are deleted every second, this many at a time
# and at most PRUNE_ROUNDS times: up to 25,000 a second per worker, above any sustained
# rate of operations one worker applies.
ANSWERS_PRUNED_AT_ONCE = 5_000
PRUNE_ROUNDS = 5
# How long a stopping worker lets the batch in hand finish (commit and send) before it
# gives up on it; an unfinished batch is simply delivered again to the next owner.
STOP_GRACE_S = 10.0

WALLET_SNAPSHOT, POOL_SNAPSHOT = "wallet", "pool"
Snapshot = tuple[str, str, str, int, str]  # kind, tenant, player or pool id, version, JSON


class OutputBuffer:
    """Cache snapshots and replies leave in batches: one Redis pipeline per flush instead
    of two round trips per command. A flush starts as soon as there is output, so an idle
    system answers at once; under load, what piles up during one flush goes in the next.
    Only the newest snapshot of a player is written."""

    def __init__(self, flush: Callable[[list[Snapshot], list[tuple[str, bytes]]], Awaitable[None]]) -> None:
        self._flush = flush
        self._snapshots: dict[tuple[str, str, str], Snapshot] = {}
        self._replies: list[tuple[str, bytes]] = []
        self._dirty = asyncio.Event()
        self._task: asyncio.Task | None = None

    def snapshot(self, tenant_id: str, subject_id: str, version: int, snapshot_json: str,
                 kind: str = WALLET_SNAPSHOT) -> None:
        self._snapshots[(kind, tenant_id, subject_id)] = (kind, tenant_id, subject_id, version, snapshot_json)
        self._wake()

    def reply(self, channel: str, payload: bytes) -> None:
        self._replies.append((channel, payload))
        self._wake()

    def _wake(self) -> None:
        self._dirty.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="output-flush")

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            snapshots, replies = list(self._snapshots.values()), self._replies
            self._snapshots, self._replies = {}, []
            try:
                await self._flush(snapshots, replies)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The cache refills on the next write and a lost reply makes the caller
                # retry with its idempotency key; neither is worth stopping the agent for.
                log.warning("dropped %d snapshots and %d replies: %r", len(snapshots), len(replies), exc)


class WorkerResources:
    """Connections a worker opens once, lazily, on the event loop Faust runs.
    Agent tests pass a subclass with in-memory adapters instead."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._redis: aioredis.Redis | None = None
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def redis(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = connect_redis(self.settings.redis_url)
        return self._redis

    async def flush_outputs(self, snapshots: list[Snapshot], replies: list[tuple[str, bytes]]) -> None:
        """Every snapshot and reply of a batch in one Redis round trip."""
        client = await self.redis()
        wallets, pools = RedisWalletCache(client), RedisPoolCache(client)
        async with client.pipeline(transaction=False) as pipe:
            for kind, tenant_id, subject_id, version, snapshot_json in snapshots:
                if kind == POOL_SNAPSHOT:
                    await pools.queue_put(pipe, tenant_id, subject_id, version, snapshot_json,
                                          self.settings.pool_cache_ttl_s)
                else:
                    await wallets.queue_put(pipe, tenant_id, subject_id, version, snapshot_json,
                                            self.settings.wallet_cache_ttl_s)
            for channel, payload in replies:
                pipe.publish(channel, payload)
            await pipe.execute()

    async def announce(self, worker_id: str, partitions: list[int], metrics_url: str) -> None:
        await (await self.redis()).set(
            worker_key_prefix(self.settings.faust_app_id) + worker_id,
            json.dumps({"worker_id": worker_id, "partitions": partitions, "metrics_url": metrics_url}),
            ex=WORKER_HEARTBEAT_TTL_S,
        )

    async def _postgres(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                await migrate(self.settings.database_url)
                self._pool = await create_pool(self.settings.database_url, max_size=4)
        return self._pool

    async def agent_store(self) -> AgentStore:
        return PostgresAgentStore(await self._postgres())

    async def ledger_store(self) -> LedgerStore:
        return PostgresLedgerStore(await self._postgres())


class Worker:
    """One worker as its agents see it: the Faust app and its streams, the settings, the
    connections, and what every agent of the worker shares."""

    def __init__(self, settings: Settings, streams: Streams, resources: WorkerResources, worker_id: str,
                 metrics_url: str = "") -> None:
        self.settings = settings
        self.streams = streams
        self.app: BankrollApp = streams.app
        self.resources = resources
        self.worker_id = worker_id
        self.metrics_url = metrics_url
        self.retention_ms = settings.idempotency_retention_s * 1000
        self.outputs = OutputBuffer(resources.flush_outputs)
        self._agent_store: AgentStore | None = None

    async def send_to_topic(self, topic: str, key: bytes, value: bytes) -> None:
        # Straight to the producer: a Faust topic's send walks each message through a
        # future, sensors and a debug log line, several times the cost of the send itself.
        await self.app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)

    async def agent_store(self) -> AgentStore:
        if self._agent_store is None:
            self._agent_store = await self.resources.agent_store()
        return self._agent_store

    def inbox(self, channel: Any) -> Inbox:
        """The inbox of the agent subscribed to `channel`. The agents are subscribed to
        their topics, and so own their partitions, as any Faust agent; their messages
        reach them through inboxes rather than the streams."""
        return self.app.inbox(channel.topics, self.settings.worker_batch_max * 4)

    def owned_partitions(self, topic: str) -> set[int]:
        return {tp.partition for tp in self.app.consumer.assignment() if tp.topic == topic}

    def serving(self) -> bool:
        """Whether the partitions this worker owns take traffic. A partition counts as
        owned (for /ready) only once its table is recovered: before that, commands for it
        would wait for the recovery."""
        app = self.app
        return (not app.rebalancing and not getattr(app, "in_recovery", False)
                and app.tables.recovery.completed.is_set())

    def forget_others(self, table: FaustRecordTable, owned: set[int]) -> None:
        """Drop the records of partitions this worker no longer owns: their new owner has
        them, and a partition that comes back is recovered and restored afresh."""
        for key, _ in table.items():
            if not self.owned_by(key, owned):
                table.table.data.pop(key, None)

    def owned_by(self, key: bytes, owned: set[int]) -> bool:
        return partition_of(key, self.settings.topic_partitions) in owned

    def owned_records(self, items: Iterable[tuple[bytes, bytes]], owned_now: set[int]) -> list[tuple[bytes, bytes]]:
        """The records among `items` of the partitions this worker owns now. Faust's memory
        store keeps what this worker wrote to partitions it has since lost; only the records
        of partitions it owns now are scheduled and published."""
        return [(key, raw) for key, raw in items if self.owned_by(key, owned_now)]


class ScanPace:
    """When an agent scans its table to rebuild its expiry schedule. The schedules are
    derived state: rebuilt from the partitions this worker owns now, which also covers
    partitions that moved here in a rebalance. Partitions that just arrived (a start, a
    rebalance after a worker died) are scanned as soon as their tables are recovered, so
    their deadlines are not a scan late; otherwise a scan comes every `interval_ms`."""

    def __init__(self, interval_ms: int) -> None:
        self.interval_ms = interval_ms
        self._last_scan_ms = 0
        self._scanned_partitions: set[int] = set()

    def due(self, owned_now: set[int], now_ms: int) -> bool:
        """Whether to scan now; a scan found due counts as made."""
        arrived = owned_now != self._scanned_partitions
        if not arrived and now_ms - self._last_scan_ms < self.interval_ms:
            return False
        self._last_scan_ms, self._scanned_partitions = now_ms, set(owned_now)
        return True


async def restore(table: RecordTable, store: AgentStore, agent: str, partitions: set[int],
                  version_of) -> int:  # type: ignore[no-untyped-def]
    """Bring the records of these partitions up to what PostgreSQL holds: a record the
    changelog did not have, or had in an older version, is taken from PostgreSQL. Runs
    once the changelog is read, before the partitions take traffic. Returns how many
    records were restored."""
    if not partitions:
        return 0
    newer = []
    for key, version, raw in await read_durably(f"the {agent} records of partitions {sorted(partitions)}",
                                                lambda: store.records(agent, partitions)):
        current = table.get(key)
        if current is None or (current != raw and version_of(current) < version):
            newer.append((key, raw))
    table.load(newer)
    return len(newer)


@dataclass
class _InFlight:
    """A batch being committed, with the fetched messages it acknowledges once durable."""

    work: asyncio.Future
    prepared: Any
    fetched: list


async def run_batches(app: BankrollApp, inbox: Inbox, settings: Settings,
                      prepare: Callable[[list[Message], Any], Awaitable[Any]],
                      finish: Callable[[Any], Awaitable[bool]]) -> None:
    """Feed an agent's inbox to its batch functions, a batch at a time: whatever has been
    fetched, up to WORKER_BATCH_MAX messages.

    The next batch is decided while the one before it is committed: `prepare(messages,
    prior)` decides on the records, answers and claims `prior` left, and `finish(prepared)`
    commits and emits, returning False when the commit was refused and the batch decided
    again, in which case the next one is decided again too (on what was committed). So
    PostgreSQL's work on one batch overlaps the worker's on the next, and outputs still
    leave in order, each batch's after the one before.

    A batch is acknowledged once it is committed. A stop lets the batch being committed
    finish first. Anything else a batch raises is a bug (an unreachable PostgreSQL is
    waited for inside it), a broken invariant above all: it stops the worker, nothing of
    the batch having been stored, so its messages go to the next owner instead of being
    passed over unacknowledged."""
    in_flight: _InFlight | None = None
    try:
        while True:
            if in_flight is None:
                fetched = await inbox.take(settings.worker_batch_max)
            else:
                taking = asyncio.ensure_future(inbox.take(settings.worker_batch_max))
                try:
                    await asyncio.wait({taking, in_flight.work}, return_when=asyncio.FIRST_COMPLETED)
                    if in_flight.work.done():
                        await _settle(app, in_flight)
                        in_flight = None
                    fetched = await taking
                finally:
                    taking.cancel()
            messages = [Message.of(m) for m in fetched]
            prepared = await _failing_stops(app, prepare(messages, in_flight.prepared if in_flight else None))
            if in_flight is not None:
                committed_as_decided = await _settle(app, in_flight)
                in_flight = None
                if not committed_as_decided:
                    prepared = await _failing_stops(app, prepare(messages, None))
            in_flight = _InFlight(asyncio.ensure_future(finish(prepared)), prepared, fetched)
    except asyncio.CancelledError:
        if in_flight is not None:
            try:
                await asyncio.wait_for(asyncio.shield(in_flight.work), STOP_GRACE_S)
                _acknowledge(app, in_flight.fetched)
            except Exception as exc:
                # Nothing of an unfinished batch leaves the worker; the next owner gets it.
                log.warning("the batch in hand did not finish while stopping: %r", exc)
        raise


async def _settle(app: BankrollApp, in_flight: _InFlight) -> bool:
    """Wait for a batch's commit (a stop does not cancel it), acknowledge its messages and
    say whether it was committed as first decided."""
    committed_as_decided = await _failing_stops(app, asyncio.shield(in_flight.work))
    _acknowledge(app, in_flight.fetched)
    return committed_as_decided


async def _failing_stops(app: BankrollApp, step: Awaitable[Any]) -> Any:
    """A step of a batch that raises stops the worker (see run_batches)."""
    try:
        return await step
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.critical("a batch failed; stopping the worker: %r", exc)
        await app.crash(exc)
        raise


def _acknowledge(app: BankrollApp, fetched: list) -> None:
    ack = app.consumer.ack
    for message in fetched:
        ack(message)


def register_heartbeat(worker: Worker) -> None:
    """Every second: announce the partitions this worker serves to Redis (the web
    process's /ready reads them), then prune the stored answers of every agent past their
    retention."""
    commands_topic = topic_name(worker.settings, WALLET_COMMANDS)

    @worker.app.timer(1.0)
    async def heartbeat() -> None:
        serving = worker.serving()
        assigned = sorted(worker.owned_partitions(commands_topic))
        await worker.resources.announce(worker.worker_id, assigned if serving else [], worker.metrics_url)
        if serving:
            await prune_answers(int(time.time() * 1000) - worker.retention_ms)

    async def prune_answers(before_ms: int) -> None:
        try:
            store = await worker.agent_store()
            for _ in range(PRUNE_ROUNDS):
                if await store.prune_answers(before_ms, ANSWERS_PRUNED_AT_ONCE) < ANSWERS_PRUNED_AT_ONCE:
                    return
        except Exception as exc:  # PostgreSQL down: the next heartbeat prunes.
            log.warning("pruning stored answers failed: %r", exc)
