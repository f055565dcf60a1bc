"""The jackpot agent, keyed by tenant|pool: load the pool record, decide, store, emit.

Operation records live beside the pool record, not in it. A busy pool takes hundreds of
contributions a second, and each contribution's record (result, postings, audit) is a few
hundred bytes, so a pool record holding the ids of the retention period would be
rewritten in full, megabytes long, on every contribution. Instead each operation's record
is stored under its own key, tenant|pool|op|{operation key}, in the same table, hence in
the same changelog partition.

The pool record is written first and carries the record of the operation its decision
made (only that one); the operation's own key is written next. Faust sends both
changelog writes through one producer to one partition, in order, so after a crash
either both are stored, neither, or only the pool record. Whenever a pool record is
loaded, the operation record it carries is written to its own key if that key is
missing. So a stored operation record always means its operation was applied, and a
redelivered command finds it whatever other messages (payout answers, ticks) the agent
handled for the pool in between.

Everything that leaves the agent (postings and audit chain records, payout requests,
`jp.contribution.recorded`, the pool snapshot and the reply) is emitted after the records
are written, and emitted again when a replayed command finds its operation recorded; a
replay asks the wallet again only for wins that are still waiting for it."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, MutableMapping

from agents.wallet import POOL_SNAPSHOT, ExpiryScheduler, OutputBuffer
from app.domain.jackpot.codec import decode_operation, decode_state, encode_operation, encode_state, operation_at_ms
from app.domain.jackpot.core import (
    Command, Context, Contribute, CreatePool, Decision, JackpotResult, PayoutCredited, PayoutFailed, Rules, decide,
    evolve, next_timer_ms, operation_key, pool_view,
)
from app.domain.jackpot.rng import derive_server_seed, seed_commitment
from app.domain.jackpot.state import CREDITED, PAYOUT_REQUESTED, PoolState
from app.messages import (
    PRUNE_POOL_OPERATIONS, READ_POOL, TOPIC_REPLY_PREFIX, CommandEnvelope, encode_ledger_batch, encode_reply,
    json_bytes, wallet_key,
)
from app.metrics import AGENT_SECONDS, JP_CONTRIBUTIONS_REFUSED, JP_PAYOUT_SECONDS, JP_POOL_SIZE, POISON_MESSAGES
from config import Settings

log = logging.getLogger("bankroll.jackpot")

OPERATION_MARK = b"|op|"


def rules_from_settings(settings: Settings) -> Rules:
    return Rules(
        payout_resend_ms=settings.jackpot_payout_resend_s * 1000,
        payout_retry_ms=settings.jackpot_payout_retry_s * 1000,
        max_payout_attempts=settings.jackpot_max_payout_attempts,
        closed_win_retention_ms=settings.jackpot_closed_win_retention_s * 1000,
    )


def operation_store_key(key: bytes, operation: str) -> bytes:
    return key + OPERATION_MARK + operation.encode()


def is_pool_key(key: bytes) -> bool:
    return OPERATION_MARK not in key


def pool_deadline(rules: Rules) -> Callable[[bytes], int | None]:
    """The scheduler's view of a table value: when the pool next needs a Tick."""

    def next_due(raw: bytes) -> int | None:
        return next_timer_ms(decode_state(raw), rules)

    return next_due


@dataclass
class JackpotAgentDeps:
    table: MutableMapping[bytes, bytes]
    send_ledger: Callable[[bytes, bytes], Awaitable[None]]
    # (full topic name, key, value): payout requests, contribution events, stream replies.
    send: Callable[[str, bytes, bytes], Awaitable[None]]
    outputs: OutputBuffer
    seed_secret: bytes
    retention_ms: int
    rules: Rules
    scheduler: ExpiryScheduler
    payout_requested_topic: str = "jp.payout.requested"
    contribution_recorded_topic: str = "jp.contribution.recorded"


def load_pool(table: MutableMapping[bytes, bytes], key: bytes) -> PoolState:
    raw = table.get(key)
    if raw is not None:
        return decode_state(raw)
    tenant_id, pool_id = key.decode().split("|", 1)
    return PoolState.empty(tenant_id, pool_id)


def poison(key: bytes, exc: Exception) -> None:
    # Stopping here would stall every pool on the partition behind one bad message.
    POISON_MESSAGES.inc()
    log.error("skipping undecodable jackpot message (key %r): %r", key, exc)


def load_for_decision(deps: JackpotAgentDeps, key: bytes) -> PoolState:
    """The pool record without operation records, after making sure the one it carries
    (the last decision's) is stored under its own key: a crash may have come between the
    two writes."""
    state = load_pool(deps.table, key)
    for operation, record in state.operations.items():
        op_key = operation_store_key(key, operation)
        if op_key not in deps.table:
            deps.table[op_key] = encode_operation(state.version, record)
    return dataclasses.replace(state, operations={})


def _with_recorded(deps: JackpotAgentDeps, key: bytes, state: PoolState, operation: str) -> PoolState:
    """The pool record as decide expects it: with the operation's record if it has one."""
    raw = deps.table.get(operation_store_key(key, operation)) if operation else None
    if raw is None:
        return state
    _, record = decode_operation(raw)
    return dataclasses.replace(state, operations={operation: record})


async def decide_and_store(deps: JackpotAgentDeps, key: bytes, state: PoolState, command: Command,
                           ctx: Context) -> tuple[PoolState, Decision]:
    """Decide on a pool record loaded by load_for_decision; store what changed."""
    operation = operation_key(command, ctx)
    decision = decide(_with_recorded(deps, key, state, operation), command, ctx)
    if decision.events:
        new_state = evolve(state, decision.events)
        recorded = new_state.operations.get(operation) if operation else None
        deps.table[key] = encode_state(new_state)
        if recorded is not None:
            deps.table[operation_store_key(key, operation)] = encode_operation(new_state.version, recorded)
        state = dataclasses.replace(new_state, operations={})
        deps.scheduler.schedule(key, next_timer_ms(state, deps.rules))
    return state, decision


async def emit(deps: JackpotAgentDeps, key: bytes, state: PoolState, command: Command, decision: Decision,
               ctx: Context) -> None:
    if decision.postings or decision.audit:
        await deps.send_ledger(key, encode_ledger_batch(decision.postings, decision.audit))
    for payout in decision.payouts:
        win = state.wins.get(payout.trigger_id)
        if decision.replayed and (win is None or win.state != PAYOUT_REQUESTED or win.attempt != payout.attempt):
            # Credited, failed or retried since: asking again now could pay a win twice
            # once the wallet has forgotten its key, or pay one an operator must look at.
            continue
        await deps.send(deps.payout_requested_topic, wallet_key(payout.tenant_id, payout.player_id),
                        json_bytes(payout.to_message()))
    if isinstance(command, Contribute) and decision.outcome.ok:
        event = {**decision.outcome.body, "tenant_id": ctx.tenant_id, "bet": command.bet_minor,
                 "recorded_at_ms": ctx.now_ms}
        await deps.send(deps.contribution_recorded_topic, key, json_bytes(event))
    publish_snapshot(deps, state)


def publish_snapshot(deps: JackpotAgentDeps, state: PoolState) -> None:
    if not state.exists:
        return
    view = pool_view(state)
    deps.outputs.snapshot(state.tenant_id, state.pool_id, state.version, json.dumps(view), kind=POOL_SNAPSHOT)
    for tier in view["tiers"]:
        JP_POOL_SIZE.labels(state.tenant_id, state.pool_id, tier["tier"]).set(tier["size"])


def context(deps: JackpotAgentDeps, state: PoolState, envelope: CommandEnvelope) -> Context:
    return Context(
        tenant_id=envelope.tenant_id, now_ms=envelope.now_ms,
        server_seed=derive_server_seed(deps.seed_secret, state.tenant_id, state.pool_id),
        operation_key=envelope.operation_key, retention_ms=deps.retention_ms, rules=deps.rules,
    )


async def apply_jackpot_envelope(deps: JackpotAgentDeps, key: bytes, envelope: CommandEnvelope) -> None:
    started = time.perf_counter()
    if envelope.kind == PRUNE_POOL_OPERATIONS:
        await prune_operations(deps, (k.encode() for k in envelope.payload.get("keys", ())
                                      if k.encode().startswith(key + OPERATION_MARK)))
        return
    state = load_for_decision(deps, key)
    if envelope.kind == READ_POOL:
        if state.exists:
            code, body = str(JackpotResult.OK), pool_view(state)
        else:
            code = str(JackpotResult.POOL_NOT_FOUND)
            body = {"error": {"code": code, "message": "no such pool"}}
    else:
        try:
            command = envelope.command()
        except Exception as exc:
            poison(key, exc)
            return
        ctx = context(deps, state, envelope)
        if isinstance(command, CreatePool):
            # The seed is the engine's; the admin never sees it, only its commitment.
            command = dataclasses.replace(command, server_seed_hash=seed_commitment(ctx.server_seed))
        state, decision = await decide_and_store(deps, key, state, command, ctx)
        await emit(deps, key, state, command, decision, ctx)
        code, body = str(decision.outcome.code), decision.outcome.body
        if isinstance(command, Contribute) and not decision.outcome.ok:
            JP_CONTRIBUTIONS_REFUSED.labels(code).inc()
            if not envelope.reply_to:
                # Carried on a game round: nobody waits for the answer, so it is told here.
                log.info("pool %r refused contribution %s: %s", key, command.contribution_id, code)
    if envelope.reply_to.startswith(TOPIC_REPLY_PREFIX):
        result = {"request_id": envelope.request_id, "code": code, "body": body}
        await deps.send(envelope.reply_to[len(TOPIC_REPLY_PREFIX):], key, json_bytes(result))
    elif envelope.reply_to:
        deps.outputs.reply(envelope.reply_to, encode_reply(envelope.request_id, code, body))
    AGENT_SECONDS.labels(envelope.kind).observe(time.perf_counter() - started)


def saga_command(credited: bool, message: dict) -> PayoutCredited | PayoutFailed:
    if credited:
        return PayoutCredited(trigger_id=message["trigger_id"], amount_minor=message["amount"])
    return PayoutFailed(trigger_id=message["trigger_id"], attempt=message["attempt"], reason=message["reason"],
                        retryable=bool(message.get("retryable", False)))


async def apply_payout_answer(deps: JackpotAgentDeps, key: bytes, raw: bytes, credited: bool) -> None:
    """`jp.payout.credited` / `jp.payout.failed` from the wallet agent. Idempotent by the
    win's state: a duplicate, late or stale answer changes nothing."""
    started = time.perf_counter()
    try:
        message = json.loads(raw)
        command = saga_command(credited, message)
        answered_at_ms = int(message["answered_at_ms"])
    except Exception as exc:
        poison(key, exc)
        return
    state = load_for_decision(deps, key)
    if not state.exists:
        log.error("payout answer for an unknown pool %r (trigger %s)", key, command.trigger_id)
        return
    ctx = Context(tenant_id=state.tenant_id, now_ms=answered_at_ms, retention_ms=deps.retention_ms, rules=deps.rules)
    before = state.wins.get(command.trigger_id)
    state, decision = await decide_and_store(deps, key, state, command, ctx)
    after = state.wins.get(command.trigger_id)
    if credited and before is not None and before.state != CREDITED and after is not None and after.state == CREDITED:
        JP_PAYOUT_SECONDS.observe(max(0, ctx.now_ms - before.created_at_ms) / 1000)
    if decision.events:
        publish_snapshot(deps, state)
    elif not decision.outcome.ok:
        # A stale or duplicate answer (e.g. for a win credited and pruned since): harmless.
        log.info("payout answer for %r trigger %s not applied: %s", key, command.trigger_id, decision.outcome.code)
    AGENT_SECONDS.labels("jp_payout_credited" if credited else "jp_payout_failed").observe(
        time.perf_counter() - started)


async def prune_operations(deps: JackpotAgentDeps, keys: Iterable[bytes]) -> None:
    """Drop operation records past the retention period. Runs in the agent, on the
    partition of their pool, because table writes need the partition's context."""
    for op_key in keys:
        raw = deps.table.get(op_key)
        if raw is not None:
            del deps.table[op_key]


def expired_operations(records: Iterable[tuple[bytes, bytes]], cutoff_ms: int) -> dict[bytes, list[bytes]]:
    """Operation records older than the cutoff, by the pool they belong to."""
    out: dict[bytes, list[bytes]] = {}
    for key, raw in records:
        if raw and not is_pool_key(key):
            if operation_at_ms(raw) < cutoff_ms:
                out.setdefault(key.split(OPERATION_MARK, 1)[0], []).append(key)
    return out
