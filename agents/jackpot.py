"""The jackpot agent, keyed by tenant|pool: a batch at a time, load the pool records,
decide, commit, emit (see agents/batch.py).

A busy pool takes hundreds of contributions a second, so the pool record carries no
operation answers at all: each operation's answer (result, postings, payouts, audit) is
stored in PostgreSQL with the batch that made it, and a command whose operation key the
batch has not answered itself is looked up there, once per batch for all of them.

Everything that leaves the agent (payout requests, `jp.contribution.recorded`, the pool
snapshot and the reply) leaves after the batch is committed. A replay emits what the
first run emitted, except postings and audit records (stored with the answer already)
and payout requests for wins that are no longer waiting for the wallet.

`register` puts the agent, the restore of its table and its timer on a worker."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import AbstractSet, Any, Callable, Sequence

from agents.batch import (
    FaustRecordTable, Message, RecordTable, Sender, applied_before, decide_and_commit, owns_key, partition_of,
    positions_of, read_durably, write_records,
)
from agents.runtime import POOL_SNAPSHOT, OutputBuffer, ScanPace, Worker, restore, run_batches
from agents.wallet import ExpiryScheduler, poison as _poison
from app.domain.jackpot.core import (
    Command, Context, Contribute, CreatePool, Decision, JackpotResult, PayoutCredited, PayoutFailed, Rules, Tick,
    already_applied, decide, evolve, next_timer_ms, operation_key, pool_view,
)
from app.domain.jackpot.rng import derive_server_seed, seed_commitment
from app.domain.jackpot.state import CREDITED, PAYOUT_REQUESTED, OperationRecord, PoolState
from app.messages import (
    PRUNE_POOL_OPERATIONS, READ_POOL, TOPIC_REPLY_PREFIX, CommandEnvelope, encode_reply, json_bytes, wallet_key,
)
from app.metrics import AGENT_SECONDS, JP_CONTRIBUTIONS_REFUSED, JP_PAYOUT_SECONDS, JP_POOL_SIZE
from app.topics import (
    JP_COMMANDS, JP_CONTRIBUTION_RECORDED, JP_PAYOUT_CREDITED, JP_PAYOUT_FAILED, JP_PAYOUT_REQUESTED, topic_name,
)
from config import Settings
from storage.ports import AgentStore, AnswerWrite, BatchCommit, RecordWrite
from tables.pools import decode_operation, decode_state, encode_operation, encode_state

log = logging.getLogger("bankroll.jackpot")

AGENT = "pool"
# Keys tenant|pool|op|{operation} held operation records beside the pool record before
# answers moved to PostgreSQL; a table restored from an old changelog may still have them.
OPERATION_MARK = b"|op|"


def rules_from_settings(settings: Settings) -> Rules:
    return Rules(
        payout_resend_ms=settings.jackpot_payout_resend_s * 1000,
        payout_retry_ms=settings.jackpot_payout_retry_s * 1000,
        max_payout_attempts=settings.jackpot_max_payout_attempts,
        closed_win_retention_ms=settings.jackpot_closed_win_retention_s * 1000,
    )


def is_pool_key(key: bytes) -> bool:
    return OPERATION_MARK not in key


def pool_deadline(rules: Rules) -> Callable[[bytes], int | None]:
    """The scheduler's view of a table value: when the pool next needs a Tick."""

    def next_due(raw: bytes) -> int | None:
        return next_timer_ms(decode_state(raw), rules)

    return next_due


@dataclass
class JackpotAgentDeps:
    table: RecordTable
    store: AgentStore
    # (full topic name, key, value): payout requests, contribution events, stream replies.
    send: Sender
    outputs: OutputBuffer
    seed_secret: bytes
    retention_ms: int
    rules: Rules
    scheduler: ExpiryScheduler
    partitions: int
    commands_topic: str = "jp.commands"
    payout_requested_topic: str = "jp.payout.requested"
    payout_credited_topic: str = "jp.payout.credited"
    payout_failed_topic: str = "jp.payout.failed"
    contribution_recorded_topic: str = "jp.contribution.recorded"


def load_pool(table: RecordTable, key: bytes) -> PoolState:
    raw = table.get(key)
    if raw is not None:
        return decode_state(raw)
    tenant_id, pool_id = key.decode().split("|", 1)
    return PoolState.empty(tenant_id, pool_id)


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


def saga_command(credited: bool, message: dict) -> PayoutCredited | PayoutFailed:
    if credited:
        return PayoutCredited(trigger_id=message["trigger_id"], amount_minor=message["amount"])
    return PayoutFailed(trigger_id=message["trigger_id"], attempt=message["attempt"], reason=message["reason"],
                        retryable=bool(message.get("retryable", False)))


@dataclass
class _Item:
    key: bytes
    envelope: CommandEnvelope | None = None  # a command or a read on jp.commands
    command: Command | None = None  # the envelope's command, built once (None for a read)
    saga: PayoutCredited | PayoutFailed | None = None  # the wallet's answer to a payout request
    answered_at_ms: int = 0
    # Set by decide_batch before its lookup of stored answers, and used by the decision.
    ctx: Context | None = None
    operation: str = ""


@dataclass
class _Decided:
    states: dict[bytes, PoolState] = field(default_factory=dict)
    loaded_versions: dict[bytes, int] = field(default_factory=dict)
    changed: set[bytes] = field(default_factory=set)
    postings: list = field(default_factory=list)
    audit: list = field(default_factory=list)
    answers: dict[tuple[bytes, str], tuple[int, OperationRecord]] = field(default_factory=dict)
    sends: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    replies: list[tuple[str, bytes]] = field(default_factory=list)


def parse(deps: JackpotAgentDeps, messages: Sequence[Message], sends: list) -> list[_Item]:
    items: list[_Item] = []
    for m in messages:
        if not (isinstance(m.key, bytes) and b"|" in m.key):
            _poison(m.key, ValueError(f"a message without a tenant|id key on {m.topic}"))
            continue
        if not owns_key(m.key, m.partition, deps.partitions):
            # Partitioned otherwise by its producer: sent again with the default
            # partitioner, so the actor that owns the pool applies it.
            sends.append((m.topic, m.key, m.value))
            continue
        try:
            if m.topic == deps.commands_topic:
                envelope = CommandEnvelope.decode(m.value)
                reading = envelope.kind in (READ_POOL, PRUNE_POOL_OPERATIONS)
                # A command that cannot be built is refused here, as a poison message.
                items.append(_Item(m.key, envelope, None if reading else envelope.command()))
            else:
                message = json.loads(m.value)
                saga = saga_command(m.topic == deps.payout_credited_topic, message)
                items.append(_Item(m.key, saga=saga, answered_at_ms=int(message["answered_at_ms"])))
        except Exception as exc:
            _poison(m.key, exc)
    return items


async def decide_batch(deps: JackpotAgentDeps, items: Sequence[_Item], sends: list,
                       in_ledger: AbstractSet[tuple[str, str]] = frozenset()) -> _Decided:
    decided = _Decided(sends=sends)
    for item in items:
        if item.key not in decided.states:
            state = load_pool(deps.table, item.key)
            decided.states[item.key] = state
            decided.loaded_versions[item.key] = state.version
    wanted = set()
    for item in items:
        if item.envelope is not None and item.command is not None:
            item.ctx = context(deps, decided.states[item.key], item.envelope)
            if isinstance(item.command, CreatePool):
                # The seed is the engine's; the admin never sees it, only its commitment.
                item.command = dataclasses.replace(item.command,
                                                   server_seed_hash=seed_commitment(item.ctx.server_seed))
            item.operation = operation_key(item.command, item.ctx)
            if item.operation:
                wanted.add((item.key, item.operation))
    found = await read_durably("stored answers", lambda: deps.store.answers(AGENT, wanted))
    stored = {pair: decode_operation(raw) for pair, raw in found.items()}
    for item in items:
        started = time.perf_counter()
        if item.saga is not None:
            _decide_saga(deps, decided, item.key, item.saga, item.answered_at_ms)
            kind = "jp_payout_credited" if isinstance(item.saga, PayoutCredited) else "jp_payout_failed"
        elif item.envelope is not None:
            _decide_command(deps, decided, item, item.envelope, stored, in_ledger)
            kind = item.envelope.kind
        AGENT_SECONDS.labels(kind).observe(time.perf_counter() - started)
    return decided


def _apply(decided: _Decided, key: bytes, state: PoolState, decision: Decision, operation: str) -> PoolState:
    """The pool record after the decision, without operation answers (those are stored
    apart); the decision's own answer goes to the batch's answers."""
    if not decision.events:
        return state
    evolved = evolve(state, decision.events)
    recorded = evolved.operations.get(operation) if operation else None
    if recorded is not None and not decision.replayed:
        decided.answers[(key, operation)] = (evolved.version, recorded)
    state = dataclasses.replace(evolved, operations={})
    decided.states[key] = state
    decided.changed.add(key)
    return state


def _decide_command(deps: JackpotAgentDeps, decided: _Decided, item: _Item, envelope: CommandEnvelope,
                    stored: dict[tuple[bytes, str], tuple[int, OperationRecord]],
                    in_ledger: AbstractSet[tuple[str, str]]) -> None:
    key = item.key
    state = decided.states[key]
    if envelope.kind == PRUNE_POOL_OPERATIONS:
        return  # answers are pruned in PostgreSQL now; a command of an older version asks for nothing
    if envelope.kind == READ_POOL:
        if state.exists:
            code, body = str(JackpotResult.OK), pool_view(state)
        else:
            code = str(JackpotResult.POOL_NOT_FOUND)
            body = {"error": {"code": code, "message": "no such pool"}}
    else:
        # decide_batch built both for every command before looking up stored answers.
        command, ctx, operation = item.command, item.ctx, item.operation
        recorded = (decided.answers.get((key, operation)) or stored.get((key, operation))) if operation else None
        view = state if recorded is None else dataclasses.replace(state, operations={operation: recorded[1]})
        decision = decide(view, command, ctx)
        if not decision.replayed and applied_before(decision.postings, in_ledger):
            decision = already_applied()
        state = _apply(decided, key, state, decision, operation)
        if not decision.replayed:
            # A replay's postings and audit records were stored with its answer.
            decided.postings.extend(decision.postings)
            decided.audit.extend(decision.audit)
        _emit(deps, decided, key, state, command, decision, ctx)
        code, body = str(decision.outcome.code), decision.outcome.body
        if isinstance(command, Contribute) and not decision.outcome.ok:
            JP_CONTRIBUTIONS_REFUSED.labels(code).inc()
            if not envelope.reply_to:
                # Carried on a game round: nobody waits for the answer, so it is told here.
                log.info("pool %r refused contribution %s: %s", key, command.contribution_id, code)
    if envelope.reply_to.startswith(TOPIC_REPLY_PREFIX):
        result = {"request_id": envelope.request_id, "code": code, "body": body}
        decided.sends.append((envelope.reply_to[len(TOPIC_REPLY_PREFIX):], key, json_bytes(result)))
    elif envelope.reply_to:
        decided.replies.append((envelope.reply_to, encode_reply(envelope.request_id, code, body)))


def _emit(deps: JackpotAgentDeps, decided: _Decided, key: bytes, state: PoolState, command: Command,
          decision: Decision, ctx: Context) -> None:
    for payout in decision.payouts:
        win = state.wins.get(payout.trigger_id)
        if decision.replayed and (win is None or win.state != PAYOUT_REQUESTED or win.attempt != payout.attempt):
            # Credited, failed or retried since: asking again now could pay a win twice
            # once the wallet has forgotten its key, or pay one an operator must look at.
            continue
        decided.sends.append((deps.payout_requested_topic, wallet_key(payout.tenant_id, payout.player_id),
                              json_bytes(payout.to_message())))
    if isinstance(command, Contribute) and decision.outcome.ok:
        event = {**decision.outcome.body, "tenant_id": ctx.tenant_id, "bet": command.bet_minor,
                 "recorded_at_ms": ctx.now_ms}
        decided.sends.append((deps.contribution_recorded_topic, key, json_bytes(event)))


def _decide_saga(deps: JackpotAgentDeps, decided: _Decided, key: bytes, command: PayoutCredited | PayoutFailed,
                 answered_at_ms: int) -> None:
    """`jp.payout.credited` / `jp.payout.failed` from the wallet agent. Idempotent by the
    win's state: a duplicate, late or stale answer changes nothing."""
    state = decided.states[key]
    if not state.exists:
        log.error("payout answer for an unknown pool %r (trigger %s)", key, command.trigger_id)
        return
    ctx = Context(tenant_id=state.tenant_id, now_ms=answered_at_ms, retention_ms=deps.retention_ms,
                  rules=deps.rules)
    before = state.wins.get(command.trigger_id)
    decision = decide(state, command, ctx)
    state = _apply(decided, key, state, decision, "")
    decided.postings.extend(decision.postings)
    decided.audit.extend(decision.audit)
    _emit(deps, decided, key, state, command, decision, ctx)
    after = state.wins.get(command.trigger_id)
    credited = isinstance(command, PayoutCredited)
    if credited and before is not None and before.state != CREDITED and after is not None and after.state == CREDITED:
        JP_PAYOUT_SECONDS.observe(max(0, ctx.now_ms - before.created_at_ms) / 1000)
    if not decision.events and not decision.outcome.ok:
        # A stale or duplicate answer (e.g. for a win credited and pruned since): harmless.
        log.info("payout answer for %r trigger %s not applied: %s", key, command.trigger_id, decision.outcome.code)


def commit_of(deps: JackpotAgentDeps, decided: _Decided, messages: Sequence[Message]) -> BatchCommit:
    records = [RecordWrite(key, decided.states[key].tenant_id, partition_of(key, deps.partitions),
                           decided.loaded_versions[key], decided.states[key].version,
                           encode_state(decided.states[key])) for key in decided.changed]
    answers = [AnswerWrite(key, operation, decided.states[key].tenant_id, encode_operation(version, record),
                           record.at_ms) for (key, operation), (version, record) in decided.answers.items()]
    return BatchCommit(agent=AGENT, consumer=AGENT, postings=decided.postings, audit=decided.audit, records=records,
                       answers=answers, positions=positions_of(messages))


async def run_batch(deps: JackpotAgentDeps, messages: Sequence[Message]) -> None:
    """Decide, commit and emit one batch (see agents/wallet.py run_batch)."""

    async def decide_once(in_ledger: set[tuple[str, str]]) -> tuple[_Decided, BatchCommit]:
        sends: list[tuple[str, bytes, bytes]] = []
        decided = await decide_batch(deps, parse(deps, messages, sends), sends, in_ledger)
        return decided, commit_of(deps, decided, messages)

    decided, commit = await decide_and_commit(deps.store, deps.table, decide_once)
    write_records(deps.table, commit)
    for key in decided.changed:
        deps.scheduler.schedule(key, next_timer_ms(decided.states[key], deps.rules))
    for state in decided.states.values():
        publish_snapshot(deps, state)
    for channel, payload in decided.replies:
        deps.outputs.reply(channel, payload)
    for topic, key, value in decided.sends:
        await deps.send(topic, key, value)


def pool_records(items: Sequence[tuple[bytes, Any]]) -> list[tuple[bytes, bytes]]:
    """The pool records among a table's entries (not the operation records an older
    version kept beside them)."""
    return [(key, raw) for key, raw in items if raw and is_pool_key(key)]


async def _decided_when_committed(messages: list[Message], prior: Any) -> list[Message]:
    """A pool batch is not decided ahead: its messages are decided when it is committed,
    on the records the batch before it committed."""
    return messages


async def _run(deps: JackpotAgentDeps, messages: list[Message]) -> bool:
    await run_batch(deps, messages)
    return True


def register(worker: Worker) -> None:
    """The jackpot agent on this worker: its Faust agent fed through its inbox, the restore
    of the `pools` table from PostgreSQL once its changelog is read, and its timer (held
    back changelog writes, the scan that schedules pools and refreshes their snapshots, and
    a Tick for each pool that falls due)."""
    app, streams, settings = worker.app, worker.streams, worker.settings
    commands_topic = topic_name(settings, JP_COMMANDS)
    pools = FaustRecordTable(streams.pools, settings.changelog_interval_s * 1000)
    rules = rules_from_settings(settings)
    scheduler = ExpiryScheduler(pool_deadline(rules))
    scans = ScanPace(settings.expiry_scan_interval_s * 1000)

    async def jackpot_deps() -> JackpotAgentDeps:
        return JackpotAgentDeps(
            table=pools, store=await worker.agent_store(), send=worker.send_to_topic, outputs=worker.outputs,
            seed_secret=settings.jackpot_seed_secret, retention_ms=worker.retention_ms, rules=rules,
            scheduler=scheduler, partitions=settings.topic_partitions, commands_topic=commands_topic,
            payout_requested_topic=topic_name(settings, JP_PAYOUT_REQUESTED),
            payout_credited_topic=topic_name(settings, JP_PAYOUT_CREDITED),
            payout_failed_topic=topic_name(settings, JP_PAYOUT_FAILED),
            contribution_recorded_topic=topic_name(settings, JP_CONTRIBUTION_RECORDED),
        )

    inbox = worker.inbox(streams.jackpot_inputs)

    @app.agent(streams.jackpot_inputs, name="jackpot")
    async def jackpot(stream):  # type: ignore[no-untyped-def]
        deps = await jackpot_deps()
        await run_batches(app, inbox, settings, _decided_when_committed, lambda messages: _run(deps, messages))

    @streams.pools.on_recover
    async def restore_pools() -> None:
        partitions = worker.owned_partitions(commands_topic)
        # Operation records an older version kept in this table live in PostgreSQL now.
        for key, _ in pools.items():
            if not is_pool_key(key):
                streams.pools.data.pop(key, None)
        worker.forget_others(pools, partitions)
        restored = await restore(pools, await worker.agent_store(), AGENT, partitions,
                                 lambda raw: decode_state(raw).version)
        log.info("pool partitions %s ready: %d records restored from PostgreSQL", sorted(partitions), restored)

    @app.timer(1.0)
    async def pool_changelog_and_expiry() -> None:
        owned = worker.owned_partitions(commands_topic)
        pools.flush_changelog(owned)
        now_ms = int(time.time() * 1000)
        if worker.serving() and scans.due(owned, now_ms):
            records = pool_records(worker.owned_records(pools.items(), owned))
            scheduler.scan(records)
            # Widgets read pool snapshots from Redis: refreshed here so a quiet pool stays listed.
            deps = await jackpot_deps()
            for _, raw in records:
                publish_snapshot(deps, decode_state(raw))
        for key in scheduler.due(now_ms):
            tenant_id = key.decode().split("|", 1)[0]
            # The tick id names the moment, so a redelivered tick is a replay, not a second tick.
            tick = CommandEnvelope.wrap(Tick(tick_id=str(now_ms)), tenant_id=tenant_id, operation_key="",
                                        request_hash="", now_ms=now_ms, reply_to="", request_id="")
            await streams.jp_commands.send(key=key, value=tick.encode())
