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
from typing import Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis
from prometheus_client import start_http_server

from agents import jackpot as jackpot_agent
from agents.ledger_flush import run_ledger_flush
from agents.wallet import (
    POOL_SNAPSHOT, ExpiryScheduler, OutputBuffer, Snapshot, WalletAgentDeps, apply_envelope, apply_payout_request,
    handle_wallet_message, owns_key, partition_of, rules_from_settings,
)
from app.api.validation import InvalidRequest
from app.domain.jackpot import core as jp
from app.domain.jackpot.codec import decode_state as decode_pool
from app.domain.wallet.core import Tick
from app.messages import PRUNE_POOL_OPERATIONS, CommandEnvelope
from app.metrics import POISON_MESSAGES, ROUNDS_REJECTED
from app.rounds import parse_round
from app.streaming import (
    GAME_ROUND_RESULTS, GAME_ROUNDS, JP_COMMANDS, JP_CONTRIBUTION_RECORDED, JP_PAYOUT_CREDITED, JP_PAYOUT_FAILED,
    JP_PAYOUT_REQUESTED, WALLET_COMMANDS, BankrollApp, Streams, create_streams, topic_name,
)
from config import Settings, load_settings
from storage.postgres.migrate import migrate
from storage.postgres.stores import PostgresLedgerStore, create_pool
from storage.ports import LedgerStore
from storage.redis.stores import RedisPoolCache, RedisWalletCache, connect as connect_redis, worker_key_prefix

log = logging.getLogger("bankroll.worker")

WORKER_HEARTBEAT_TTL_S = 5
PRUNE_BATCH = 1000


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

    def postings_sender(self, streams: Streams) -> Callable[[bytes, bytes], Awaitable[None]]:
        async def send_postings(key: bytes, value: bytes) -> None:
            await streams.ledger_postings.send(key=key, value=value)

        return send_postings

    async def announce(self, worker_id: str, partitions: list[int], metrics_url: str) -> None:
        await (await self.redis()).set(
            worker_key_prefix(self.settings.faust_app_id) + worker_id,
            json.dumps({"worker_id": worker_id, "partitions": partitions, "metrics_url": metrics_url}),
            ex=WORKER_HEARTBEAT_TTL_S,
        )

    async def ledger_store(self) -> LedgerStore:
        async with self._lock:
            if self._pool is None:
                await migrate(self.settings.database_url)
                self._pool = await create_pool(self.settings.database_url, max_size=4)
        return PostgresLedgerStore(self._pool)


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
    results_topic = topic_name(settings, GAME_ROUND_RESULTS)
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    scheduler = ExpiryScheduler()
    jp_rules = jackpot_agent.rules_from_settings(settings)
    pool_scheduler = ExpiryScheduler(jackpot_agent.pool_deadline(jp_rules))
    last_scan_ms = [0]
    scanned_partitions: list[int] = []
    retention_ms = settings.idempotency_retention_s * 1000
    outputs = OutputBuffer(resources.flush_outputs)

    rounds_topic = topic_name(settings, GAME_ROUNDS)
    jp_names = {name: topic_name(settings, name) for name in (
        JP_COMMANDS, JP_CONTRIBUTION_RECORDED, JP_PAYOUT_REQUESTED, JP_PAYOUT_CREDITED, JP_PAYOUT_FAILED)}
    jp_topics = {jp_names[JP_COMMANDS]: streams.jp_commands,
                 jp_names[JP_CONTRIBUTION_RECORDED]: streams.jp_contribution_recorded,
                 jp_names[JP_PAYOUT_REQUESTED]: streams.jp_payout_requested,
                 jp_names[JP_PAYOUT_CREDITED]: streams.jp_payout_credited,
                 jp_names[JP_PAYOUT_FAILED]: streams.jp_payout_failed}
    reply_topics = {results_topic: streams.game_round_results, **jp_topics}

    async def send_to_topic(topic: str, key: bytes, value: bytes) -> None:
        if topic not in reply_topics:
            reply_topics[topic] = app.topic(topic, key_serializer="raw", value_serializer="raw")
        await reply_topics[topic].send(key=key, value=value)

    async def on_round(deps: WalletAgentDeps, event) -> None:  # type: ignore[no-untyped-def]
        try:
            key, envelope = parse_round(event.value, int(event.message.timestamp * 1000), results_topic)
        except InvalidRequest as exc:
            ROUNDS_REJECTED.inc()
            result = {"request_id": "", "code": "invalid_request", "body": {"error": {
                "code": "invalid_request", "message": str(exc)}}}
            await streams.game_round_results.send(key=event.key, value=json.dumps(result).encode())
            return
        if event.key == key and owns_key(key, event.message.partition, settings.topic_partitions):
            await apply_envelope(deps, key, envelope)
        else:
            # Keyed or partitioned otherwise by its producer: re-keyed onto the command topic,
            # so the actor that owns the player applies it in order with its other commands.
            await streams.wallet_commands.send(key=key, value=envelope.encode())

    def owned(event) -> bool:  # type: ignore[no-untyped-def]
        return owns_key(event.key, event.message.partition, settings.topic_partitions)

    def keyed(event) -> bool:  # type: ignore[no-untyped-def]
        """Every Bankroll key is tenant|id; anything else no Bankroll process wrote."""
        if isinstance(event.key, bytes) and b"|" in event.key:
            return True
        POISON_MESSAGES.inc()
        log.error("skipping a message without a tenant|id key on %s", event.message.topic)
        return False

    @app.agent(streams.wallet_inputs, name="wallet")
    async def wallet_agent(stream):  # type: ignore[no-untyped-def]
        deps = WalletAgentDeps(
            table=streams.wallets,
            send_ledger=resources.postings_sender(streams),
            outputs=outputs,
            send_to_topic=send_to_topic,
            retention_ms=retention_ms,
            rules=rules_from_settings(settings),
            scheduler=scheduler,
            jp_commands_topic=jp_names[JP_COMMANDS],
            jp_credited_topic=jp_names[JP_PAYOUT_CREDITED],
            jp_failed_topic=jp_names[JP_PAYOUT_FAILED],
        )
        async for event in stream.events():
            topic = event.message.topic
            if topic == rounds_topic:
                await on_round(deps, event)
            elif not keyed(event):
                continue
            elif topic == jp_names[JP_PAYOUT_REQUESTED]:
                if owned(event):
                    await apply_payout_request(deps, event.key, event.value)
                else:
                    await resend(event)
            else:
                await handle_wallet_message(deps, event.key, event.value)

    async def resend(event) -> None:  # type: ignore[no-untyped-def]
        # Partitioned otherwise by its producer: sent again with the default partitioner, so
        # the actor that owns the key applies it in order with everything else about it.
        await send_to_topic(event.message.topic, event.key, event.value)

    jackpot_deps = jackpot_agent.JackpotAgentDeps(
        table=streams.pools,
        send_ledger=resources.postings_sender(streams),
        send=send_to_topic,
        outputs=outputs,
        seed_secret=settings.jackpot_seed_secret,
        retention_ms=retention_ms,
        rules=jp_rules,
        scheduler=pool_scheduler,
        payout_requested_topic=jp_names[JP_PAYOUT_REQUESTED],
        contribution_recorded_topic=jp_names[JP_CONTRIBUTION_RECORDED],
    )

    @app.agent(streams.jackpot_inputs, name="jackpot")
    async def jackpot(stream):  # type: ignore[no-untyped-def]
        async for event in stream.events():
            if not keyed(event):
                continue
            if not owned(event):
                await resend(event)
                continue
            topic = event.message.topic
            if topic == jp_names[JP_COMMANDS]:
                try:
                    envelope = CommandEnvelope.decode(event.value)
                except Exception as exc:
                    jackpot_agent.poison(event.key, exc)
                    continue
                await jackpot_agent.apply_jackpot_envelope(jackpot_deps, event.key, envelope)
            else:
                await jackpot_agent.apply_payout_answer(jackpot_deps, event.key, event.value,
                                                        credited=topic == jp_names[JP_PAYOUT_CREDITED])

    @app.agent(streams.ledger_postings, name="ledger-flush")
    async def ledger_flush_agent(stream):  # type: ignore[no-untyped-def]
        await run_ledger_flush(
            stream, resources.ledger_store, settings.ledger_flush_max_rows, settings.ledger_flush_within_ms / 1000
        )

    @app.timer(1.0)
    async def heartbeat_and_expiry() -> None:
        # A partition counts as owned (for /ready) only once its table is recovered: before
        # that, commands for it would wait for the recovery.
        serving = (not app.rebalancing and not getattr(app, "in_recovery", False)
                   and app.tables.recovery.completed.is_set())
        assigned = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == commands_topic)
        await resources.announce(worker_id, assigned if serving else [], metrics_url)
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
            scheduler.scan(mine(streams.wallets.items(), set(assigned)))
            await scan_pools(now_ms, set(assigned))
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

    def mine(items, owned_now: set[int]) -> list[tuple[bytes, bytes]]:  # type: ignore[no-untyped-def]
        """The table entries of these partitions. An operation record sits on its pool's
        partition (Faust writes a table entry to the partition of the event being
        processed), so it goes by its pool's key."""
        return [(key, raw) for key, raw in items
                if partition_of(key.split(jackpot_agent.OPERATION_MARK, 1)[0], settings.topic_partitions) in owned_now]

    async def scan_pools(now_ms: int, owned_now: set[int]) -> None:
        items = mine(streams.pools.items(), owned_now)
        pools = [(key, raw) for key, raw in items if raw and jackpot_agent.is_pool_key(key)]
        pool_scheduler.scan(pools)
        # Widgets read pool snapshots from Redis: refreshed here so a quiet pool stays listed.
        for key, raw in pools:
            jackpot_agent.publish_snapshot(jackpot_deps, decode_pool(raw))
        for key, expired in jackpot_agent.expired_operations(items, now_ms - retention_ms).items():
            tenant_id = key.decode().split("|", 1)[0]
            # In slices, so no message comes near the broker's size limit.
            for start in range(0, len(expired), PRUNE_BATCH):
                prune = CommandEnvelope(kind=PRUNE_POOL_OPERATIONS, tenant_id=tenant_id, operation_key="",
                                        request_hash="", now_ms=now_ms, reply_to="", request_id="",
                                        payload={"keys": [k.decode() for k in expired[start:start + PRUNE_BATCH]]})
                await streams.jp_commands.send(key=key, value=prune.encode())

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
