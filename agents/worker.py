"""Entry point of a Faust worker: `python -m agents.worker`.

Builds the Faust app from the settings, attaches the agents, and runs it. Several workers
with the same FAUST_APP_ID form one consumer group and split the partitions."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
import time

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import start_http_server

from agents import jackpot as jackpot_agent
from agents import wallet as wallet_agent_module
from agents.batch import FaustRecordTable, Message, RecordTable, read_durably, with_crash_point
from agents.ledger_flush import run_ledger_flush
from agents.wallet import POOL_SNAPSHOT, ExpiryScheduler, OutputBuffer, Snapshot, WalletAgentDeps, partition_of
from app.domain.jackpot import core as jp
from app.domain.wallet.core import Tick
from app.messages import CommandEnvelope
from app.streaming import BankrollApp, Inbox, create_streams
from app.topics import (
    GAME_ROUND_RESULTS, GAME_ROUNDS, JP_COMMANDS, JP_CONTRIBUTION_RECORDED, JP_PAYOUT_CREDITED, JP_PAYOUT_FAILED,
    JP_PAYOUT_REQUESTED, WALLET_COMMANDS, topic_name,
)
from config import Settings, load_settings
from storage.postgres.agent_state import PostgresAgentStore
from storage.postgres.migrate import migrate
from storage.postgres.stores import PostgresLedgerStore, create_pool
from storage.ports import AgentStore, LedgerStore
from storage.redis.stores import RedisPoolCache, RedisWalletCache, connect as connect_redis, worker_key_prefix
from tables.pools import decode_state as decode_pool
from tables.wallets import record_version

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


async def run_batches(app: BankrollApp, inbox: Inbox, settings: Settings, run_batch) -> None:  # type: ignore[no-untyped-def]
    """Feed an agent's inbox to its batch function, a batch at a time: whatever has been
    fetched, up to WORKER_BATCH_MAX messages. A batch is acknowledged once it is
    committed. A stop lets the batch in hand finish first. Anything else a batch raises is
    a bug (an unreachable PostgreSQL is waited for inside it), a broken invariant above
    all: it stops the worker, nothing of the batch having been stored, so its messages go
    to the next owner instead of being passed over unacknowledged."""
    while True:
        fetched = await inbox.take(settings.worker_batch_max)
        work = asyncio.ensure_future(run_batch([Message.of(m) for m in fetched]))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            try:
                await asyncio.wait_for(work, STOP_GRACE_S)
            except Exception:
                pass
            raise
        except Exception as exc:
            log.critical("a batch failed; stopping the worker: %r", exc)
            await app.crash(exc)
            raise
        ack = app.consumer.ack
        for message in fetched:
            ack(message)


def build_worker(
    settings: Settings,
    worker_id: str | None = None,
    resources: WorkerResources | None = None,
    metrics_url: str = "",
) -> BankrollApp:
    # Faust creates its datadir without parents; the run dir exists only when an embedded
    # service made it.
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    streams = create_streams(settings)
    app = streams.app
    resources = resources or WorkerResources(settings)
    commands_topic = topic_name(settings, WALLET_COMMANDS)
    jp_commands_topic = topic_name(settings, JP_COMMANDS)
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    scheduler = ExpiryScheduler()
    jp_rules = jackpot_agent.rules_from_settings(settings)
    pool_scheduler = ExpiryScheduler(jackpot_agent.pool_deadline(jp_rules))
    last_scan_ms = [0]
    scanned_partitions: list[int] = []
    retention_ms = settings.idempotency_retention_s * 1000
    outputs = OutputBuffer(resources.flush_outputs)
    interval_ms = settings.changelog_interval_s * 1000
    wallets = FaustRecordTable(streams.wallets, interval_ms)
    pools = FaustRecordTable(streams.pools, interval_ms)
    names = {name: topic_name(settings, name) for name in (
        GAME_ROUNDS, GAME_ROUND_RESULTS, JP_COMMANDS, JP_CONTRIBUTION_RECORDED, JP_PAYOUT_REQUESTED,
        JP_PAYOUT_CREDITED, JP_PAYOUT_FAILED)}
    async def send_to_topic(topic: str, key: bytes, value: bytes) -> None:
        # Straight to the producer: a Faust topic's send walks each message through a
        # future, sensors and a debug log line, several times the cost of the send itself.
        await app.producer.send(topic, key, value, partition=None, timestamp=None, headers=None)

    stores: dict[str, AgentStore] = {}

    async def agent_store() -> AgentStore:
        if "store" not in stores:
            stores["store"] = await resources.agent_store()
        return stores["store"]

    async def wallet_deps() -> WalletAgentDeps:
        return WalletAgentDeps(
            table=wallets, store=with_crash_point(await agent_store(), settings.fault_crash_point),
            outputs=outputs, send_to_topic=send_to_topic,
            retention_ms=retention_ms, rules=wallet_agent_module.rules_from_settings(settings), scheduler=scheduler,
            partitions=settings.topic_partitions, commands_topic=commands_topic, rounds_topic=names[GAME_ROUNDS],
            results_topic=names[GAME_ROUND_RESULTS], payout_requested_topic=names[JP_PAYOUT_REQUESTED],
            jp_commands_topic=names[JP_COMMANDS], jp_credited_topic=names[JP_PAYOUT_CREDITED],
            jp_failed_topic=names[JP_PAYOUT_FAILED],
        )

    async def jackpot_deps() -> jackpot_agent.JackpotAgentDeps:
        return jackpot_agent.JackpotAgentDeps(
            table=pools, store=await agent_store(), send=send_to_topic, outputs=outputs,
            seed_secret=settings.jackpot_seed_secret, retention_ms=retention_ms, rules=jp_rules,
            scheduler=pool_scheduler, partitions=settings.topic_partitions, commands_topic=jp_commands_topic,
            payout_requested_topic=names[JP_PAYOUT_REQUESTED], payout_credited_topic=names[JP_PAYOUT_CREDITED],
            payout_failed_topic=names[JP_PAYOUT_FAILED],
            contribution_recorded_topic=names[JP_CONTRIBUTION_RECORDED],
        )

    # The agents are subscribed to their topics, and so own their partitions, as any Faust
    # agent; their messages reach them through inboxes rather than the streams.
    pending_max = settings.worker_batch_max * 4
    wallet_inbox = app.inbox(streams.wallet_inputs.topics, pending_max)
    jackpot_inbox = app.inbox(streams.jackpot_inputs.topics, pending_max)

    @app.agent(streams.wallet_inputs, name="wallet")
    async def wallet_agent(stream):  # type: ignore[no-untyped-def]
        deps = await wallet_deps()
        await run_batches(app, wallet_inbox, settings, lambda messages: wallet_agent_module.run_batch(deps, messages))

    @app.agent(streams.jackpot_inputs, name="jackpot")
    async def jackpot(stream):  # type: ignore[no-untyped-def]
        deps = await jackpot_deps()
        await run_batches(app, jackpot_inbox, settings, lambda messages: jackpot_agent.run_batch(deps, messages))

    # Postings an earlier version left on `ledger.postings` are still flushed; nothing
    # writes there now (the agents commit their postings with their batches).
    @app.agent(streams.ledger_postings, name="ledger-flush")
    async def ledger_flush_agent(stream):  # type: ignore[no-untyped-def]
        await run_ledger_flush(
            stream, resources.ledger_store, settings.ledger_flush_max_rows, settings.ledger_flush_within_ms / 1000
        )

    def owned_partitions(topic: str) -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == topic}

    @streams.wallets.on_recover
    async def restore_wallets() -> None:
        partitions = owned_partitions(commands_topic)
        forget_others(wallets, partitions)
        started = time.monotonic()
        restored = await restore(wallets, await agent_store(), wallet_agent_module.AGENT, partitions,
                                 record_version)
        log.info("wallet partitions %s ready: %d records restored from PostgreSQL in %.2f s", sorted(partitions),
                 restored, time.monotonic() - started)

    @streams.pools.on_recover
    async def restore_pools() -> None:
        partitions = owned_partitions(jp_commands_topic)
        # Operation records an older version kept in this table live in PostgreSQL now.
        for key, _ in pools.items():
            if not jackpot_agent.is_pool_key(key):
                streams.pools.data.pop(key, None)
        forget_others(pools, partitions)
        restored = await restore(pools, await agent_store(), jackpot_agent.AGENT, partitions,
                                 lambda raw: decode_pool(raw).version)
        log.info("pool partitions %s ready: %d records restored from PostgreSQL", sorted(partitions), restored)

    @app.timer(1.0)
    async def heartbeat_and_expiry() -> None:
        # A partition counts as owned (for /ready) only once its table is recovered: before
        # that, commands for it would wait for the recovery.
        serving = (not app.rebalancing and not getattr(app, "in_recovery", False)
                   and app.tables.recovery.completed.is_set())
        assigned = sorted(owned_partitions(commands_topic))
        await resources.announce(worker_id, assigned if serving else [], metrics_url)
        wallets.flush_changelog(set(assigned))
        pools.flush_changelog(owned_partitions(jp_commands_topic))
        now_ms = int(time.time() * 1000)
        # Partitions that just arrived (a start, a rebalance after a worker died) are scanned
        # as soon as their tables are recovered, so their deadlines are not a scan late.
        arrived = assigned != scanned_partitions
        if serving and (arrived or now_ms - last_scan_ms[0] >= settings.expiry_scan_interval_s * 1000):
            # The schedules are derived state: rebuilt from the partitions this worker owns
            # now, which also covers partitions that moved here in a rebalance.
            last_scan_ms[0] = now_ms
            scanned_partitions[:] = assigned
            # Faust's memory store keeps what this worker wrote to partitions it has since
            # lost; only the records of partitions it owns now are scheduled and published.
            scheduler.scan(mine(wallets.items(), set(assigned)))
            await scan_pools(set(assigned))
        if serving:
            await prune_answers(now_ms - retention_ms)
        for key in scheduler.due(now_ms):
            tenant_id = key.decode().split("|", 1)[0]
            tick = CommandEnvelope.wrap(Tick(), tenant_id=tenant_id, operation_key="", request_hash="",
                                        now_ms=now_ms, reply_to="", request_id="")
            await streams.wallet_commands.send(key=key, value=tick.encode())
        for key in pool_scheduler.due(now_ms):
            tenant_id = key.decode().split("|", 1)[0]
            # The tick id names the moment, so a redelivered tick is a replay, not a second tick.
            tick = CommandEnvelope.wrap(jp.Tick(tick_id=str(now_ms)), tenant_id=tenant_id, operation_key="",
                                        request_hash="", now_ms=now_ms, reply_to="", request_id="")
            await streams.jp_commands.send(key=key, value=tick.encode())

    async def prune_answers(before_ms: int) -> None:
        try:
            store = await agent_store()
            for _ in range(PRUNE_ROUNDS):
                if await store.prune_answers(before_ms, ANSWERS_PRUNED_AT_ONCE) < ANSWERS_PRUNED_AT_ONCE:
                    return
        except Exception as exc:  # PostgreSQL down: the next heartbeat prunes.
            log.warning("pruning stored answers failed: %r", exc)

    def forget_others(table: FaustRecordTable, owned: set[int]) -> None:
        """Drop the records of partitions this worker no longer owns: their new owner has
        them, and a partition that comes back is recovered and restored afresh."""
        for key, _ in table.items():
            if not owned_by(key, owned):
                table.table.data.pop(key, None)

    def owned_by(key: bytes, owned: set[int]) -> bool:
        return partition_of(key, settings.topic_partitions) in owned

    def mine(items, owned_now: set[int]) -> list[tuple[bytes, bytes]]:  # type: ignore[no-untyped-def]
        return [(key, raw) for key, raw in items if owned_by(key, owned_now)]

    async def scan_pools(owned_now: set[int]) -> None:
        records = jackpot_agent.pool_records(mine(pools.items(), owned_now))
        pool_scheduler.scan(records)
        # Widgets read pool snapshots from Redis: refreshed here so a quiet pool stays listed.
        deps = await jackpot_deps()
        for _, raw in records:
            jackpot_agent.publish_snapshot(deps, decode_pool(raw))

    return app


def main() -> None:
    settings = load_settings()
    server, _ = start_http_server(settings.worker_metrics_port, addr=settings.http_host)
    metrics_url = f"http://{settings.http_host}:{server.server_port}/metrics"
    app = build_worker(settings, metrics_url=metrics_url)
    faust_level = {"warning": "warn"}.get(settings.log_level, settings.log_level)
    # Faust's own web server is not used: Bankroll's HTTP API is a separate process.
    sys.argv = [sys.argv[0], "worker", "--loglevel", faust_level, "--without-web"]
    app.main()


if __name__ == "__main__":
    main()
