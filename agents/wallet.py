"""The wallet agent, keyed by tenant|player: load the record, decide, store, emit.

Everything that leaves the agent (postings and audit records, cache snapshot, reply) is
emitted after the record is written, and emitted again when a replayed command finds
its operation id already recorded: the first run's outputs may never have left the
process."""
from __future__ import annotations

import asyncio
import heapq
import json
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, MutableMapping

from aiokafka.partitioner import DefaultPartitioner

from app.domain.wallet.codec import decode_state, encode_state
from app.domain.wallet.core import (
    Context, Rules, WalletResult, WalletState, decide, evolve, limits_view, wallet_view, withdrawal_view,
)
from app.messages import (
    READ_KINDS, READ_LIMITS, READ_WALLET, TOPIC_REPLY_PREFIX, CommandEnvelope, encode_ledger_batch, encode_reply,
)
from app.metrics import AGENT_SECONDS, POISON_MESSAGES
from config import Settings

log = logging.getLogger("bankroll.wallet")


def rules_from_settings(settings: Settings) -> Rules:
    return Rules(
        bet_hold_ttl_ms=settings.bet_hold_ttl_s * 1000,
        withdrawal_hold_ttl_ms=settings.withdrawal_hold_ttl_s * 1000,
        limit_increase_delay_ms=settings.limit_increase_delay_s * 1000,
        max_deposits_per_hour=settings.max_deposits_per_hour,
        max_withdrawals_per_hour=settings.max_withdrawals_per_hour,
        blocked_destinations=settings.blocked_payout_destinations,
    )


class ExpiryScheduler:
    """When each player's record next has something to expire. Derived from the table,
    so it is rebuilt by a scan after a restart or a rebalance and needs no storage; a
    due key gets a Tick command on its own partition, serialized with everything else."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, bytes]] = []
        self._scheduled: dict[bytes, int] = {}

    def schedule(self, key: bytes, at_ms: int | None) -> None:
        if at_ms is None or self._scheduled.get(key) == at_ms:
            return
        self._scheduled[key] = at_ms
        heapq.heappush(self._heap, (at_ms, key))

    def due(self, now_ms: int) -> list[bytes]:
        keys = []
        while self._heap and self._heap[0][0] <= now_ms:
            at_ms, key = heapq.heappop(self._heap)
            if self._scheduled.get(key) == at_ms:
                del self._scheduled[key]
                keys.append(key)
        return keys

    def scan(self, records: Iterable[tuple[bytes, bytes]]) -> None:
        for key, raw in records:
            if raw:
                self.schedule(key, decode_state(raw).next_deadline_ms())


Snapshot = tuple[str, str, int, str]  # tenant, player, version, JSON


class OutputBuffer:
    """Cache snapshots and replies leave in batches: one Redis pipeline per flush instead
    of two round trips per command. A flush starts as soon as there is output, so an idle
    system answers at once; under load, what piles up during one flush goes in the next.
    Only the newest snapshot of a player is written."""

    def __init__(self, flush: Callable[[list[Snapshot], list[tuple[str, bytes]]], Awaitable[None]]) -> None:
        self._flush = flush
        self._snapshots: dict[tuple[str, str], Snapshot] = {}
        self._replies: list[tuple[str, bytes]] = []
        self._dirty = asyncio.Event()
        self._task: asyncio.Task | None = None

    def snapshot(self, tenant_id: str, player_id: str, version: int, snapshot_json: str) -> None:
        self._snapshots[(tenant_id, player_id)] = (tenant_id, player_id, version, snapshot_json)
        self._wake()

    def reply(self, channel: str, payload: bytes) -> None:
        self._replies.append((channel, payload))
        self._wake()

    def _wake(self) -> None:
        self._dirty.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="wallet-output-flush")

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


@dataclass
class WalletAgentDeps:
    table: MutableMapping[bytes, bytes]
    send_ledger: Callable[[bytes, bytes], Awaitable[None]]
    outputs: OutputBuffer
    send_topic_reply: Callable[[str, bytes, bytes], Awaitable[None]]
    retention_ms: int
    rules: Rules
    scheduler: ExpiryScheduler


def load_state(table: MutableMapping[bytes, bytes], key: bytes, tenant_id: str) -> WalletState:
    raw = table.get(key)
    if raw is not None:
        return decode_state(raw)
    player_id = key.decode().split("|", 1)[1]
    return WalletState.empty(tenant_id, player_id)


def _read(state: WalletState, envelope: CommandEnvelope) -> tuple[str, dict]:
    if not state.registered:
        return str(WalletResult.PLAYER_NOT_FOUND), {"error": {"code": "player_not_found", "message": "no such player"}}
    if envelope.kind == READ_WALLET:
        return str(WalletResult.OK), wallet_view(state)
    if envelope.kind == READ_LIMITS:
        return str(WalletResult.OK), {"player_id": state.player_id, **limits_view(state.limits, envelope.now_ms)}
    withdrawal = state.withdrawals.get(envelope.payload.get("withdrawal_id", ""))
    if withdrawal is None:
        code = WalletResult.WITHDRAWAL_NOT_FOUND
        return str(code), {"error": {"code": str(code), "message": "no such withdrawal"}}
    return str(WalletResult.OK), withdrawal_view(withdrawal)


def _poison(key: bytes, exc: Exception) -> None:
    # A message no Bankroll process could have written. Stopping here would stall every
    # player on the partition behind it, so it is counted, logged and passed over.
    POISON_MESSAGES.inc()
    log.error("skipping undecodable wallet command (key %r): %r", key, exc)


async def handle_wallet_message(deps: WalletAgentDeps, key: bytes, value: bytes) -> None:
    try:
        envelope = CommandEnvelope.decode(value)
    except Exception as exc:
        _poison(key, exc)
        return
    await apply_envelope(deps, key, envelope)


def owns_key(key: bytes, partition: int, partitions: int) -> bool:
    """Whether a message on this partition may be applied to the record of its key: the
    partition the command topic (and so the table) would use for it. A producer with
    another partitioner would otherwise give one player two owners."""
    return _PARTITIONER(key, list(range(partitions)), list(range(partitions))) == partition


_PARTITIONER = DefaultPartitioner()


async def apply_envelope(deps: WalletAgentDeps, key: bytes, envelope: CommandEnvelope) -> None:
    started = time.perf_counter()
    try:
        command = None if envelope.kind in READ_KINDS else envelope.command()
    except Exception as exc:
        _poison(key, exc)
        return
    state = load_state(deps.table, key, envelope.tenant_id)

    if command is None:
        code, body = _read(state, envelope)
    else:
        ctx = Context(
            tenant_id=envelope.tenant_id,
            operation_key=envelope.operation_key,
            request_hash=envelope.request_hash,
            now_ms=envelope.now_ms,
            retention_ms=deps.retention_ms,
            rules=deps.rules,
        )
        decision = decide(state, command, ctx)
        if decision.events:
            state = evolve(state, decision.events)
            deps.table[key] = encode_state(state)
            deps.scheduler.schedule(key, state.next_deadline_ms())
        if decision.postings or decision.audit:
            await deps.send_ledger(key, encode_ledger_batch(decision.postings, decision.audit))
        code, body = str(decision.outcome.code), decision.outcome.body

    if state.registered:
        deps.outputs.snapshot(state.tenant_id, state.player_id, state.version, json.dumps(wallet_view(state)))
    if envelope.reply_to.startswith(TOPIC_REPLY_PREFIX):
        result = {"request_id": envelope.request_id, "code": code, "body": body}
        await deps.send_topic_reply(envelope.reply_to[len(TOPIC_REPLY_PREFIX):], key, json.dumps(result).encode())
    elif envelope.reply_to:
        deps.outputs.reply(envelope.reply_to, encode_reply(envelope.request_id, code, body))
    AGENT_SECONDS.labels(envelope.kind).observe(time.perf_counter() - started)
