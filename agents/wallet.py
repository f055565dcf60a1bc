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
from dataclasses import asdict, dataclass
from typing import Awaitable, Callable, Iterable, MutableMapping

from aiokafka.partitioner import DefaultPartitioner

from app.domain.jackpot.core import Contribute
from app.domain.wallet.codec import decode_state, encode_state
from app.domain.wallet.core import (
    RETRYABLE_JACKPOT_REFUSALS, Context, CreditJackpot, PlayRound, Rules, WalletResult, WalletState, decide, evolve,
    limits_view, wallet_view, withdrawal_view,
)
from app.messages import (
    READ_KINDS, READ_LIMITS, READ_WALLET, TOPIC_REPLY_PREFIX, CommandEnvelope, encode_ledger_batch, encode_reply,
    json_bytes, pool_key, request_hash, wallet_key,
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


def _wallet_deadline(raw: bytes) -> int | None:
    return decode_state(raw).next_deadline_ms()


class ExpiryScheduler:
    """When each record next has something to do (a hold to expire, a pool deadline, a
    payout to send again). Derived from the table, so it is rebuilt by a scan after a
    restart or a rebalance and needs no storage; a due key gets a Tick command on its own
    partition, serialized with everything else."""

    def __init__(self, next_due: Callable[[bytes], int | None] = _wallet_deadline) -> None:
        self._heap: list[tuple[int, bytes]] = []
        self._scheduled: dict[bytes, int] = {}
        self._next_due = next_due

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
                self.schedule(key, self._next_due(raw))


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


@dataclass
class WalletAgentDeps:
    table: MutableMapping[bytes, bytes]
    send_ledger: Callable[[bytes, bytes], Awaitable[None]]
    outputs: OutputBuffer
    # (full topic name, key, value): stream replies, round contributions, payout answers.
    send_to_topic: Callable[[str, bytes, bytes], Awaitable[None]]
    retention_ms: int
    rules: Rules
    scheduler: ExpiryScheduler
    # Full topic names of the jackpot topics the wallet writes to (TOPIC_PREFIX applied).
    jp_commands_topic: str = "jp.commands"
    jp_credited_topic: str = "jp.payout.credited"
    jp_failed_topic: str = "jp.payout.failed"


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


def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a key on every Bankroll topic and table (Kafka's default murmur2)."""
    return _PARTITIONER(key, list(range(partitions)), list(range(partitions)))


def owns_key(key: bytes, partition: int, partitions: int) -> bool:
    """Whether a message on this partition may be applied to the record of its key: the
    partition the command topic (and so the table) would use for it. A producer with
    another partitioner would otherwise give one player two owners."""
    return partition_of(key, partitions) == partition


_PARTITIONER = DefaultPartitioner()


async def apply_envelope(deps: WalletAgentDeps, key: bytes, envelope: CommandEnvelope) -> tuple[str, dict] | None:
    """Apply one command and emit its outputs; returns the result (code, body), or None
    for a message that could not be decoded."""
    started = time.perf_counter()
    try:
        command = None if envelope.kind in READ_KINDS else envelope.command()
    except Exception as exc:
        _poison(key, exc)
        return None
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
        if isinstance(command, PlayRound) and command.jackpots and decision.outcome.ok:
            # A replay sends them again too: the pool counts a contribution id once.
            await _send_round_contributions(deps, envelope, command, state.player_id)

    if state.registered:
        deps.outputs.snapshot(state.tenant_id, state.player_id, state.version, json.dumps(wallet_view(state)))
    if envelope.reply_to.startswith(TOPIC_REPLY_PREFIX):
        result = {"request_id": envelope.request_id, "code": code, "body": body}
        await deps.send_to_topic(envelope.reply_to[len(TOPIC_REPLY_PREFIX):], key, json.dumps(result).encode())
    elif envelope.reply_to:
        deps.outputs.reply(envelope.reply_to, encode_reply(envelope.request_id, code, body))
    AGENT_SECONDS.labels(envelope.kind).observe(time.perf_counter() - started)
    return code, body


async def _send_round_contributions(deps: WalletAgentDeps, envelope: CommandEnvelope, command: PlayRound,
                                    player_id: str) -> None:
    for pool_id, explicit_minor in command.jackpots:
        contribute = Contribute(
            contribution_id=envelope.operation_key, brand_id=command.brand_id, region=command.region,
            round_id=command.round_id, player_id=player_id, bet_minor=command.bet_minor, currency=command.currency,
            contribution_minor=explicit_minor, provider=command.provider,
        )
        message = CommandEnvelope.wrap(contribute, tenant_id=envelope.tenant_id, operation_key="", request_hash="",
                                       now_ms=envelope.now_ms, reply_to="", request_id="")
        await deps.send_to_topic(deps.jp_commands_topic, pool_key(envelope.tenant_id, pool_id), message.encode())


def payout_envelope(message: dict) -> CommandEnvelope:
    """The wallet command for a `jp.payout.requested` event. Its request hash covers what
    the credit is (not the attempt or the time it was asked), so every attempt of one win
    is the same operation; the time is the request's, so a redelivery decides alike."""
    command = CreditJackpot(
        pool_id=message["pool_id"], trigger_id=message["trigger_id"], tier=message["tier"],
        amount_minor=message["amount"], currency=message["currency"], round_id=message["round_id"],
        brand_id=message["brand_id"],
    )
    meaning = {"payout_key": message["idempotency_key"], "player_id": message["player_id"], **asdict(command)}
    return CommandEnvelope.wrap(command, tenant_id=message["tenant_id"], operation_key=message["idempotency_key"],
                                request_hash=request_hash(meaning), now_ms=message["requested_at_ms"], reply_to="",
                                request_id="")


async def apply_payout_request(deps: WalletAgentDeps, key: bytes, raw: bytes) -> None:
    """Credit a jackpot win and answer the pool on `jp.payout.credited` or
    `jp.payout.failed`. A request for a win already credited is answered as credited
    again: the pool may never have heard the first answer."""
    try:
        message = json.loads(raw)
        envelope = payout_envelope(message)
        if key != wallet_key(message["tenant_id"], message["player_id"]):
            # The record credited is the key's: a win must reach its own winner's record.
            raise ValueError("the message's key is not its winner's")
    except Exception as exc:
        _poison(key, exc)
        return
    result = await apply_envelope(deps, key, envelope)
    if result is None:
        return
    code, body = result
    answer = {k: message[k] for k in ("tenant_id", "pool_id", "tier", "trigger_id", "idempotency_key", "player_id",
                                      "round_id", "brand_id", "region", "amount", "currency", "attempt")}
    # The answer's own time (the pool records when its win was credited); the command's
    # time is the request's, kept for the wallet's replays.
    answer["answered_at_ms"] = int(time.time() * 1000)
    if code in (WalletResult.CREATED, WalletResult.OK):
        topic = deps.jp_credited_topic
    else:
        topic = deps.jp_failed_topic
        answer.update(reason=code, retryable=code in RETRYABLE_JACKPOT_REFUSALS,
                      message=body.get("error", {}).get("message", ""))
        if code == WalletResult.IDEMPOTENCY_CONFLICT:
            log.error("payout %s requested again with another amount or winner", message["idempotency_key"])
    await deps.send_to_topic(topic, pool_key(message["tenant_id"], message["pool_id"]), json_bytes(answer))
