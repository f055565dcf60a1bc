"""The wallet agent, keyed by tenant|player: a batch at a time, load the records, decide,
commit, emit (see agents/batch.py for the shape every batched agent has).

Each record keeps a short window of recent answers; a command whose operation key is not
in the window is looked up among the stored answers, once per batch for all of them, and
so are the claims of the ids the batch's commands create or name. Everything that leaves
the agent (changelog writes, cache snapshots, replies, messages to the jackpot agent)
leaves after the batch is committed to PostgreSQL, so an answer a client holds is durable.

`register` puts the agent, the restore of its table and its timer on a worker."""
from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import AbstractSet, Any, Callable, Iterable, Sequence

import msgpack

from agents.batch import (
    FaustRecordTable, Message, RecordTable, Sender, applied_before, decide_and_commit, owns_key, partition_of,
    positions_of, read_durably, with_crash_point, write_records,
)
from agents.runtime import OutputBuffer, ScanPace, Worker, restore, run_batches
from app.api.validation import InvalidRequest
from app.domain.jackpot.core import Contribute
from app.domain.wallet.core import (
    CLAIMING, RETRYABLE_JACKPOT_REFUSALS, Context, CreditJackpot, PlayRound, Rules, Tick, WalletResult, WalletState,
    already_applied, claim_of, decide, evolve, limits_view, wallet_view, withdrawal_view,
)
from app.domain.wallet.state import OperationRecord
from app.messages import (
    READ_KINDS, READ_LIMITS, READ_WALLET, TOPIC_REPLY_PREFIX, CommandEnvelope, encode_reply, json_bytes, pool_key,
    request_hash, wallet_key,
)
from app.metrics import AGENT_SECONDS, POISON_MESSAGES, ROUNDS_REJECTED
from app.rounds import parse_round
from app.topics import (
    GAME_ROUND_RESULTS, GAME_ROUNDS, JP_COMMANDS, JP_PAYOUT_CREDITED, JP_PAYOUT_FAILED, JP_PAYOUT_REQUESTED,
    WALLET_COMMANDS, topic_name,
)
from config import Settings
from storage.ports import AgentStore, AnswerWrite, BatchCommit, Claim, RecordWrite
from tables.wallets import decode_state, encode_state, record_version

log = logging.getLogger("bankroll.wallet")

AGENT = "wallet"


def rules_from_settings(settings: Settings) -> Rules:
    return Rules(
        bet_hold_ttl_ms=settings.bet_hold_ttl_s * 1000,
        withdrawal_hold_ttl_ms=settings.withdrawal_hold_ttl_s * 1000,
        limit_increase_delay_ms=settings.limit_increase_delay_s * 1000,
        max_deposits_per_hour=settings.max_deposits_per_hour,
        max_withdrawals_per_hour=settings.max_withdrawals_per_hour,
        blocked_destinations=settings.blocked_payout_destinations,
        operation_window_ms=settings.idempotency_window_s * 1000,
        operation_window_count=settings.idempotency_window_ops,
        closed_kept_per_kind=settings.closed_items_kept,
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


# How many players' decoded records a worker keeps beside their encoded ones: the hot
# players of a busy worker, whose records are otherwise decoded again for every batch.
DECODED_KEPT = 4_096


class DecodedRecords:
    """The decoded state of recently written records, each valid only while the table
    holds the very bytes it was decoded from (a restore or a rebalance replaces them).
    States are immutable, so one may serve any number of batches."""

    def __init__(self, capacity: int = DECODED_KEPT) -> None:
        self.capacity = capacity
        self._entries: dict[bytes, tuple[bytes, WalletState]] = {}

    def get(self, key: bytes, raw: bytes) -> WalletState | None:
        entry = self._entries.get(key)
        return entry[1] if entry is not None and entry[0] is raw else None

    def put(self, key: bytes, raw: bytes, state: WalletState) -> None:
        entries = self._entries
        entries.pop(key, None)
        entries[key] = (raw, state)
        if len(entries) > self.capacity:
            del entries[next(iter(entries))]


@dataclass
class WalletAgentDeps:
    table: RecordTable
    store: AgentStore
    outputs: OutputBuffer
    # (full topic name, key, value): stream replies, round contributions, payout answers.
    send_to_topic: Sender
    retention_ms: int
    rules: Rules
    scheduler: ExpiryScheduler
    partitions: int
    # Full topic names (TOPIC_PREFIX applied).
    commands_topic: str = "wallet.commands"
    rounds_topic: str = "game.rounds"
    results_topic: str = "game.rounds.results"
    payout_requested_topic: str = "jp.payout.requested"
    jp_commands_topic: str = "jp.commands"
    jp_credited_topic: str = "jp.payout.credited"
    jp_failed_topic: str = "jp.payout.failed"
    decoded: DecodedRecords = field(default_factory=DecodedRecords)


def encode_answer(record: OperationRecord) -> bytes:
    """A stored answer of the wallet: what a replay needs (request hash, code, body, time)."""
    return msgpack.packb([record.request_hash, record.code, record.body, record.at_ms], use_bin_type=True)


def decode_answer(raw: bytes) -> OperationRecord:
    request, code, body, at_ms = msgpack.unpackb(raw, raw=False)
    return OperationRecord(request, code, body, at_ms)


def load_state(table: RecordTable, key: bytes, tenant_id: str, decoded: DecodedRecords | None = None) -> WalletState:
    raw = table.get(key)
    if raw is not None:
        state = decoded.get(key, raw) if decoded is not None else None
        return state if state is not None else decode_state(raw)
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


def poison(key: Any, exc: Exception) -> None:
    # A message no Bankroll process could have written. Stopping here would stall every
    # player on the partition behind it, so it is counted, logged and passed over.
    POISON_MESSAGES.inc()
    log.error("skipping an undecodable wallet message (key %r): %r", key, exc)


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


@dataclass
class _Item:
    """One message of the batch that the wallet decides: a command, a read, a round or a
    jackpot payout request (then `payout` holds the request)."""

    key: bytes
    envelope: CommandEnvelope
    command: Any = None  # None for reads
    payout: dict | None = None
    # Messages passed on that arrived before this one (see parse), sent in their place.
    forwards_before: list[tuple[str, bytes, bytes]] = field(default_factory=list)


@dataclass
class _Outputs:
    """What a decided batch sends once it is committed."""

    sends: list[tuple[str, bytes, bytes]] = field(default_factory=list)
    replies: list[tuple[str, bytes]] = field(default_factory=list)
    # Messages passed on that arrived after the batch's last decided message.
    forwards_after: list[tuple[str, bytes, bytes]] = field(default_factory=list)


def parse(deps: WalletAgentDeps, messages: Sequence[Message], outputs: _Outputs) -> list[_Item]:
    """The batch's messages as items to decide. Messages that only need passing on (a
    round or payout request keyed or partitioned otherwise by its producer, a round that
    fails validation) are sent in their place among the batch's sends, so what a producer
    sent on one key is answered in order; undecodable ones are skipped."""
    items: list[_Item] = []
    forwards: list[tuple[str, bytes, bytes]] = []

    def add(item: _Item) -> None:
        nonlocal forwards
        item.forwards_before, forwards = forwards, []
        items.append(item)

    for m in messages:
        if m.topic == deps.rounds_topic:
            try:
                key, envelope = parse_round(m.value, m.timestamp_ms, deps.results_topic)
            except InvalidRequest as exc:
                ROUNDS_REJECTED.inc()
                result = {"request_id": "", "code": "invalid_request", "body": {"error": {
                    "code": "invalid_request", "message": str(exc)}}}
                forwards.append((deps.results_topic, m.key, json.dumps(result).encode()))
                continue
            if m.key == key and owns_key(key, m.partition, deps.partitions):
                add(_Item(key, envelope, envelope.command()))
            else:
                # Keyed or partitioned otherwise by its producer: re-keyed onto the command
                # topic, so the actor that owns the player applies it in order with its
                # other commands.
                forwards.append((deps.commands_topic, key, envelope.encode()))
            continue
        if not (isinstance(m.key, bytes) and b"|" in m.key):
            # Every Bankroll key is tenant|id; anything else no Bankroll process wrote.
            poison(m.key, ValueError(f"a message without a tenant|id key on {m.topic}"))
            continue
        if not owns_key(m.key, m.partition, deps.partitions):
            # Partitioned otherwise by its producer: sent again with the default
            # partitioner, so the actor that owns the key applies it.
            forwards.append((m.topic, m.key, m.value))
            continue
        if m.topic == deps.payout_requested_topic:
            try:
                message = json.loads(m.value)
                envelope = payout_envelope(message)
                if m.key != wallet_key(message["tenant_id"], message["player_id"]):
                    # The record credited is the key's: a win must reach its own winner's record.
                    raise ValueError("the message's key is not its winner's")
            except Exception as exc:
                poison(m.key, exc)
                continue
            add(_Item(m.key, envelope, envelope.command(), payout=message))
            continue
        try:
            envelope = CommandEnvelope.decode(m.value)
            command = None if envelope.kind in READ_KINDS else envelope.command()
        except Exception as exc:
            poison(m.key, exc)
            continue
        add(_Item(m.key, envelope, command))
    outputs.forwards_after = forwards
    return items


class _Decided:
    """A batch decided on its records: the new records, answers and claims to commit, and
    the outputs to send after the commit."""

    def __init__(self) -> None:
        self.states: dict[bytes, WalletState] = {}
        self.loaded_versions: dict[bytes, int] = {}
        # Each record's window as loaded: an answer the batch itself pushed out of the
        # window is found here (it is stored already, but was not looked up).
        self.loaded_answers: dict[bytes, dict[str, OperationRecord]] = {}
        self.changed: set[bytes] = set()
        self.postings: list = []
        self.audit: list = []
        self.answers: dict[tuple[bytes, str], OperationRecord] = {}
        self.claims: dict[tuple[str, str], Claim] = {}
        self.outputs = _Outputs()


async def decide_batch(deps: WalletAgentDeps, items: Sequence[_Item], outputs: _Outputs,
                       in_ledger: AbstractSet[tuple[str, str]] = frozenset(), prior: _Decided | None = None,
                       ) -> _Decided:
    decided = _Decided()
    decided.outputs = outputs
    states = decided.states
    for item in items:
        if item.key not in states:
            state = prior.states.get(item.key) if prior is not None else None
            if state is None:
                state = load_state(deps.table, item.key, item.envelope.tenant_id, deps.decoded)
            states[item.key] = state
            decided.loaded_versions[item.key] = state.version
            decided.loaded_answers[item.key] = state.operations
    # Prefetch, one query each: the stored answers of operations the records' windows
    # no longer hold, and the claims of the ids the commands create or name.
    wanted_answers = {(i.key, i.envelope.operation_key) for i in items
                      if i.command is not None and i.envelope.operation_key
                      and i.envelope.operation_key not in states[i.key].operations}
    wanted_claims = {(i.envelope.tenant_id, claim) for i in items if i.command is not None
                     for claim in (claim_of(i.command),) if claim}
    stored, known = await read_durably(
        "stored answers and claims", lambda: deps.store.answers_and_claims(AGENT, wanted_answers, wanted_claims))
    stored_answers = {pair: decode_answer(raw) for pair, raw in stored.items()}
    claimed = set(known)
    if prior is not None:
        # The batch before may still be committing: what it answered and claimed is not in
        # storage yet.
        stored_answers.update(prior.answers)
        claimed.update(prior.claims)
    for item in items:
        started = time.perf_counter()
        decided.outputs.sends.extend(item.forwards_before)
        _decide_one(deps, decided, item, stored_answers, claimed, in_ledger)
        AGENT_SECONDS.labels(item.envelope.kind).observe(time.perf_counter() - started)
    decided.outputs.sends.extend(outputs.forwards_after)
    return decided


def _decide_one(deps: WalletAgentDeps, decided: _Decided, item: _Item,
                stored_answers: dict[tuple[bytes, str], OperationRecord], claimed: set[tuple[str, str]],
                in_ledger: AbstractSet[tuple[str, str]]) -> None:
    envelope, key = item.envelope, item.key
    state = decided.states[key]
    if item.command is None:
        code, body = _read(state, envelope)
    else:
        operation = envelope.operation_key
        view = state
        if operation and operation not in state.operations:
            recorded = (decided.answers.get((key, operation)) or decided.loaded_answers[key].get(operation)
                        or stored_answers.get((key, operation)))
            if recorded is not None:
                view = dataclasses.replace(state, operations={**state.operations, operation: recorded})
        claim = claim_of(item.command)
        ctx = Context(
            tenant_id=envelope.tenant_id, operation_key=operation, request_hash=envelope.request_hash,
            now_ms=envelope.now_ms, retention_ms=deps.retention_ms, rules=deps.rules,
            claimed=frozenset((claim,)) if claim and (envelope.tenant_id, claim) in claimed else frozenset(),
        )
        decision = decide(view, item.command, ctx)
        if applied_before(decision.postings, in_ledger):
            decision = already_applied()
        if decision.events:
            state = evolve(state, decision.events)
            decided.states[key] = state
            decided.changed.add(key)
        decided.postings.extend(decision.postings)
        decided.audit.extend(decision.audit)
        if decision.outcome.ok and not decision.replayed:
            if operation and operation in state.operations:
                decided.answers[(key, operation)] = state.operations[operation]
            if claim and isinstance(item.command, CLAIMING):
                claimed.add((envelope.tenant_id, claim))
                decided.claims[(envelope.tenant_id, claim)] = Claim(envelope.tenant_id, claim, state.player_id)
        code, body = str(decision.outcome.code), decision.outcome.body
        if isinstance(item.command, PlayRound) and item.command.jackpots and decision.outcome.ok:
            # A replay sends them again too: the pool counts a contribution id once.
            _round_contributions(deps, decided.outputs, envelope, item.command, state.player_id)
        if item.payout is not None:
            _payout_answer(deps, decided.outputs, item.payout, code, body)
    if envelope.reply_to.startswith(TOPIC_REPLY_PREFIX):
        result = {"request_id": envelope.request_id, "code": code, "body": body}
        decided.outputs.sends.append((envelope.reply_to[len(TOPIC_REPLY_PREFIX):], key, json.dumps(result).encode()))
    elif envelope.reply_to:
        decided.outputs.replies.append((envelope.reply_to, encode_reply(envelope.request_id, code, body)))


def _round_contributions(deps: WalletAgentDeps, outputs: _Outputs, envelope: CommandEnvelope, command: PlayRound,
                         player_id: str) -> None:
    for pool_id, explicit_minor in command.jackpots:
        # One contribution per player and round: a provider's round may have many players.
        contribute = Contribute(
            contribution_id=f"{envelope.operation_key}:{player_id}", brand_id=command.brand_id, region=command.region,
            round_id=command.round_id, player_id=player_id, bet_minor=command.bet_minor, currency=command.currency,
            contribution_minor=explicit_minor, provider=command.provider,
        )
        message = CommandEnvelope.wrap(contribute, tenant_id=envelope.tenant_id, operation_key="", request_hash="",
                                       now_ms=envelope.now_ms, reply_to="", request_id="")
        outputs.sends.append((deps.jp_commands_topic, pool_key(envelope.tenant_id, pool_id), message.encode()))


def _payout_answer(deps: WalletAgentDeps, outputs: _Outputs, message: dict, code: str, body: dict) -> None:
    """Answer the pool on `jp.payout.credited` or `jp.payout.failed`. A request for a win
    already credited is answered as credited again: the pool may never have heard the
    first answer."""
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
    outputs.sends.append((topic, pool_key(message["tenant_id"], message["pool_id"]), json_bytes(answer)))


def commit_of(deps: WalletAgentDeps, decided: _Decided, messages: Sequence[Message]) -> BatchCommit:
    records = []
    for key in decided.changed:
        state = decided.states[key]
        records.append(RecordWrite(key, state.tenant_id, partition_of(key, deps.partitions),
                                   decided.loaded_versions[key], state.version, encode_state(state)))
    answers = [AnswerWrite(key, operation, decided.states[key].tenant_id, encode_answer(record), record.at_ms)
               for (key, operation), record in decided.answers.items()]
    return BatchCommit(agent=AGENT, consumer=AGENT, postings=decided.postings, audit=decided.audit,
                       records=records, answers=answers, claims=list(decided.claims.values()),
                       positions=positions_of(messages))


@dataclass
class Prepared:
    """A batch decided, not yet committed: perhaps on the records the batch before it
    left, while that one was still being committed (see agents/runtime.py run_batches)."""

    messages: Sequence[Message]
    decided: _Decided
    commit: BatchCommit


async def prepare(deps: WalletAgentDeps, messages: Sequence[Message], prior: Prepared | None = None) -> Prepared:
    """Decide a batch; with `prior`, on the records, answers and claims of that batch,
    which may not be committed yet."""
    outputs = _Outputs()
    decided = await decide_batch(deps, parse(deps, messages, outputs), outputs,
                                 prior=prior.decided if prior is not None else None)
    return Prepared(messages, decided, commit_of(deps, decided, messages))


async def finish(deps: WalletAgentDeps, prepared: Prepared) -> bool:
    """Commit and emit a prepared batch, deciding it again when its commit is refused.
    Returns once the batch is durable and its outputs are on their way (the caller then
    acknowledges the messages): True when it was committed as first decided, so that a
    batch decided on it still holds."""
    decisions = iter([(prepared.decided, prepared.commit)])

    async def decide_once(in_ledger: set[tuple[str, str]]) -> tuple[_Decided, BatchCommit]:
        first = next(decisions, None)
        if first is not None:
            return first
        outputs = _Outputs()
        decided = await decide_batch(deps, parse(deps, prepared.messages, outputs), outputs, in_ledger)
        return decided, commit_of(deps, decided, prepared.messages)

    decided, commit = await decide_and_commit(deps.store, deps.table, decide_once)
    await publish(deps, decided, commit)
    return decided is prepared.decided


async def run_batch(deps: WalletAgentDeps, messages: Sequence[Message]) -> None:
    """Decide, commit and emit one batch on the committed records."""
    await finish(deps, await prepare(deps, messages))


async def publish(deps: WalletAgentDeps, decided: _Decided, commit: BatchCommit) -> None:
    write_records(deps.table, commit)
    for write in commit.records:
        deps.decoded.put(write.key, write.record, decided.states[write.key])
    for key in decided.changed:
        deps.scheduler.schedule(key, decided.states[key].next_deadline_ms())
    for key, state in decided.states.items():
        if state.registered:
            deps.outputs.snapshot(state.tenant_id, state.player_id, state.version, json.dumps(wallet_view(state)))
    for channel, payload in decided.outputs.replies:
        deps.outputs.reply(channel, payload)
    for topic, key, value in decided.outputs.sends:
        await deps.send_to_topic(topic, key, value)


def register(worker: Worker) -> None:
    """The wallet agent on this worker: its Faust agent fed through its inbox, the restore
    of the `wallets` table from PostgreSQL once its changelog is read, and its timer (held
    back changelog writes, the expiry scan and a Tick for each record that falls due)."""
    app, streams, settings = worker.app, worker.streams, worker.settings
    commands_topic = topic_name(settings, WALLET_COMMANDS)
    wallets = FaustRecordTable(streams.wallets, settings.changelog_interval_s * 1000)
    scheduler = ExpiryScheduler()
    scans = ScanPace(settings.expiry_scan_interval_s * 1000)

    async def wallet_deps() -> WalletAgentDeps:
        return WalletAgentDeps(
            table=wallets, store=with_crash_point(await worker.agent_store(), settings.fault_crash_point),
            outputs=worker.outputs, send_to_topic=worker.send_to_topic,
            retention_ms=worker.retention_ms, rules=rules_from_settings(settings), scheduler=scheduler,
            partitions=settings.topic_partitions, commands_topic=commands_topic,
            rounds_topic=topic_name(settings, GAME_ROUNDS), results_topic=topic_name(settings, GAME_ROUND_RESULTS),
            payout_requested_topic=topic_name(settings, JP_PAYOUT_REQUESTED),
            jp_commands_topic=topic_name(settings, JP_COMMANDS),
            jp_credited_topic=topic_name(settings, JP_PAYOUT_CREDITED),
            jp_failed_topic=topic_name(settings, JP_PAYOUT_FAILED),
        )

    inbox = worker.inbox(streams.wallet_inputs)

    @app.agent(streams.wallet_inputs, name="wallet")
    async def wallet_agent(stream):  # type: ignore[no-untyped-def]
        deps = await wallet_deps()
        await run_batches(app, inbox, settings, lambda messages, prior: prepare(deps, messages, prior),
                          lambda prepared: finish(deps, prepared))

    @streams.wallets.on_recover
    async def restore_wallets() -> None:
        partitions = worker.owned_partitions(commands_topic)
        worker.forget_others(wallets, partitions)
        started = time.monotonic()
        restored = await restore(wallets, await worker.agent_store(), AGENT, partitions, record_version)
        log.info("wallet partitions %s ready: %d records restored from PostgreSQL in %.2f s", sorted(partitions),
                 restored, time.monotonic() - started)

    @app.timer(1.0)
    async def wallet_changelog_and_expiry() -> None:
        owned = worker.owned_partitions(commands_topic)
        wallets.flush_changelog(owned)
        now_ms = int(time.time() * 1000)
        if worker.serving() and scans.due(owned, now_ms):
            scheduler.scan(worker.owned_records(wallets.items(), owned))
        for key in scheduler.due(now_ms):
            tenant_id = key.decode().split("|", 1)[0]
            tick = CommandEnvelope.wrap(Tick(), tenant_id=tenant_id, operation_key="", request_hash="",
                                        now_ms=now_ms, reply_to="", request_id="")
            await streams.wallet_commands.send(key=key, value=tick.encode())
