"""A batch decides as its messages would one at a time: the same records, the same answers
in the same order, the same postings, whatever the batches' boundaries.

Random message sequences over a few players (or pools), with replays of operation keys
under the same and a different body, ids claimed by two players, reads and ticks, run
once cut into random batches and once one message per batch, each against fresh memory
stores. Every message carries its own time (the envelope's `now_ms`, a round's
timestamp), so both runs are deterministic and must agree exactly: the records in the
table and in the store, the stored answers and claims, every reply and every message
sent, and the ledger's postings and audit records as multisets (one committed twice
would show there, though the ledger keeps it once)."""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import asdict, dataclass, fields

from hypothesis import HealthCheck, given, settings, strategies as st

from agents import jackpot as jackpot_agent
from agents import wallet as wallet_agent
from agents.batch import DictRecordTable, Message, partition_of
from agents.wallet import ExpiryScheduler, WalletAgentDeps
from app.domain.jackpot import core as jp
from app.domain.wallet.core import Rules
from app.messages import (
    COMMAND_NAMES, READ_LIMITS, READ_POOL, READ_WALLET, READ_WITHDRAWAL, CommandEnvelope, decode_reply, pool_key,
    request_hash, wallet_key,
)
from config import Settings
from storage.memory.stores import MemoryAgentStore
from storage.ports import BatchCommit

TENANT = "dev"
PARTITIONS = 4
T0 = 1_700_000_000_000
# A small window and a short hold, so that answers leave the record within a few messages
# (a replay is then answered from the batch or the store) and holds expire on a tick.
RULES = Rules(bet_hold_ttl_ms=30_000, max_deposits_per_hour=10**6, operation_window_ms=5_000,
              operation_window_count=3, closed_kept_per_kind=2)
# Time between two messages: none (same millisecond), a little, past the window, past a hold.
GAPS = st.sampled_from((0, 1, 900, 6_000, 31_000))
PLAYERS = st.sampled_from(("p1", "p2", "p3"))
AMOUNTS = st.integers(1, 3_000)
# Where a run is cut into batches: nowhere (one batch) or at up to four places.
CUTS = st.sets(st.integers(1, 45), max_size=4)


@dataclass(frozen=True)
class Step:
    topic: str
    key: bytes
    value: bytes
    now_ms: int


def messages_of(steps: list[Step]) -> list[Message]:
    offsets: Counter = Counter()
    out = []
    for step in steps:
        partition = partition_of(step.key, PARTITIONS)
        out.append(Message(step.topic, partition, offsets[(step.topic, partition)], step.key, step.value,
                           step.now_ms))
        offsets[(step.topic, partition)] += 1
    return out


def cut(messages: list[Message], cuts: set[int]) -> list[list[Message]]:
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(messages)), len(messages)]
    return [messages[a:b] for a, b in zip(bounds, bounds[1:])]


class RecordingStore(MemoryAgentStore):
    """Keeps every posting and audit record committed, as multisets."""

    def __init__(self) -> None:
        super().__init__()
        self.postings: Counter = Counter()
        self.audit: Counter = Counter()

    async def commit(self, batch: BatchCommit) -> None:
        await super().commit(batch)
        self.postings.update(batch.postings)
        self.audit.update(json.dumps(a.to_wire(), sort_keys=True) for a in batch.audit)


class Outputs:
    """What leaves the agent, in order: replies, messages sent, and each subject's newest snapshot."""

    def __init__(self) -> None:
        self.replies: list[tuple[str, tuple]] = []
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.snapshots: dict[tuple[str, str, str], tuple[int, str]] = {}

    def snapshot(self, tenant_id: str, subject_id: str, version: int, snapshot_json: str,
                 kind: str = "wallet") -> None:
        self.snapshots[(kind, tenant_id, subject_id)] = (version, snapshot_json)

    def reply(self, channel: str, payload: bytes) -> None:
        self.replies.append((channel, decode_reply(payload)))

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))


@dataclass
class Observed:
    table: dict
    stored_records: dict
    answers: dict
    claims: dict
    postings: Counter
    audit: Counter
    positions: dict
    replies: list
    sent: list
    snapshots: dict


async def observe(agent: str, table: DictRecordTable, store: RecordingStore, outputs: Outputs) -> Observed:
    return Observed(
        table=dict(table.data), stored_records=dict(store.records_by_agent[agent]),
        answers=dict(store.answers_by_agent[agent]), claims=dict(store.routes), postings=store.postings,
        audit=store.audit, positions=await store.ledger.positions(agent), replies=outputs.replies,
        sent=outputs.sent, snapshots=outputs.snapshots,
    )


def assert_same(batched: Observed, one_by_one: Observed) -> None:
    for f in fields(Observed):
        assert getattr(batched, f.name) == getattr(one_by_one, f.name), f.name
    # And each posting was committed once, in either run.
    legs = Counter((p.tenant_id, p.operation_id, p.leg) for p in batched.postings.elements())
    assert all(n == 1 for n in legs.values()), [leg for leg, n in legs.items() if n > 1]


# ---------------------------------------------------------------- the wallet

def envelope(kind: str, operation: str, payload: dict, now_ms: int, request_id: str) -> bytes:
    return CommandEnvelope(kind=kind, tenant_id=TENANT, operation_key=operation, request_hash=request_hash(payload),
                           now_ms=now_ms, reply_to="replies", request_id=request_id, payload=payload).encode()


def altered(payload: dict) -> dict:
    """Another body for the same operation key: its first amount one more, or else its
    first text longer."""
    for name, value in payload.items():
        if isinstance(value, int) and not isinstance(value, bool):
            return {**payload, name: value + 1}
        if isinstance(value, dict):
            return {**payload, name: altered(value)}
    name = next(n for n, v in payload.items() if isinstance(v, str))
    return {**payload, name: payload[name] + "x"}


@st.composite
def wallet_steps(draw: st.DrawFn) -> list[Step]:
    steps: list[Step] = []
    # (topic, player, kind, operation key, payload) of what was sent with a key, to replay.
    keyed: list[tuple[str, str, str, str, dict]] = []
    now = T0
    # Most runs register and fund some players first, so that most commands are decided on
    # a wallet holding money; the others meet players that do not exist yet.
    for player in draw(st.lists(PLAYERS, unique=True, max_size=3)):
        for kind, operation, payload in (
                ("create_player", f"player:{player}", {"player_id": player, "currency": "EUR", "country": "DE"}),
                ("adjust", f"fund:{player}", {"adjustment_id": f"fund-{player}", "wallet": "CASH", "currency": "EUR",
                                              "amount_minor": 20_000, "reason": "test funding"})):
            steps.append(Step("wallet.commands", wallet_key(TENANT, player),
                              envelope(kind, operation, payload, now, operation), now))
            keyed.append(("wallet.commands", player, kind, operation, payload))
    for n in range(draw(st.integers(1, 40))):
        now += draw(GAPS)
        player = draw(PLAYERS)
        what = draw(st.sampled_from((
            "create", "fund", "fund", "deposit", "psp", "place", "place", "settle", "cancel", "round", "round",
            "round_command", "read", "tick", "again", "again", "again")))
        topic, kind, operation, payload = "wallet.commands", "", f"op{n}", {}
        if what == "again" and keyed:
            topic, player, kind, operation, payload = draw(st.sampled_from(keyed))
            if draw(st.booleans()):
                payload = altered(payload)
        elif what == "create":
            country = draw(st.sampled_from(("DE", "DE", "AT")))
            kind, operation = "create_player", f"player:{player}"
            payload = {"player_id": player, "currency": "EUR", "country": country}
        elif what == "fund":
            kind = "adjust"
            payload = {"adjustment_id": draw(st.sampled_from(("a1", "a2", "a3", "a4"))), "wallet": "CASH",
                       "currency": "EUR", "amount_minor": draw(st.integers(-500, 5_000).filter(bool)),
                       "reason": "test funding"}
        elif what == "deposit":
            kind = "request_deposit"
            payload = {"deposit_id": draw(st.sampled_from(("d1", "d2"))), "player_id": player,
                       "amount_minor": draw(AMOUNTS), "currency": "EUR", "method": "card"}
        elif what == "psp":
            deposit_id = draw(st.sampled_from(("d1", "d2")))
            kind, operation = "apply_psp_result", f"psp:sandbox:e-{deposit_id}-{draw(st.integers(1, 2))}"
            payload = {"psp": "sandbox", "event_id": operation, "deposit_id": deposit_id,
                       "status": draw(st.sampled_from(("SUCCEEDED", "FAILED"))), "amount_minor": draw(AMOUNTS),
                       "currency": "EUR", "fee_minor": draw(st.integers(0, 50))}
        elif what == "place":
            kind = "place_bet"
            payload = {"bet_id": draw(st.sampled_from(("b1", "b2", "b3"))), "amount_minor": draw(AMOUNTS),
                       "currency": "EUR", "policy": draw(st.sampled_from(("casino", "sports")))}
        elif what == "settle":
            won = draw(st.booleans())
            kind = "settle_bet"
            payload = {"bet_id": draw(st.sampled_from(("b1", "b2", "b3"))), "result": "WIN" if won else "LOSS",
                       "payout_minor": draw(AMOUNTS) if won else 0}
        elif what == "cancel":
            kind, payload = "cancel_bet", {"bet_id": draw(st.sampled_from(("b1", "b2", "b3")))}
        elif what == "round":
            # A game server's round on `game.rounds`; its operation key is the round id, so a
            # round id drawn twice is a replay or, with other amounts, a conflict.
            topic, kind = "game.rounds", "round"
            payload = {"round_id": draw(st.sampled_from(("r1", "r2", "r3", "r4"))), "tenant_id": TENANT,
                       "player_id": player, "provider": "acme",
                       "bet": {"amount": draw(st.integers(0, 800)), "currency": "EUR"},
                       "win": {"amount": draw(st.sampled_from((0, 0, 150, 1_200))), "currency": "EUR"}}
            if draw(st.booleans()):
                payload.update(brand_id="b1", jackpots=[{"pool_id": "grand"}])
        elif what == "round_command":
            kind = "play_round"
            payload = {"round_id": f"rc{n}", "provider": "acme", "bet_minor": draw(st.integers(0, 800)),
                       "win_minor": draw(st.sampled_from((0, 300))), "currency": "EUR", "policy": "casino",
                       "brand_id": "b1", "region": "", "jackpots": [["grand", None], ["daily", 2]]}
        elif what == "read":
            kind = draw(st.sampled_from((READ_WALLET, READ_LIMITS, READ_WITHDRAWAL)))
            operation, payload = "", {"withdrawal_id": "w1"} if kind == READ_WITHDRAWAL else {}
        else:  # a tick, or a replay before anything was sent with a key
            kind, operation = "tick", ""
        key = wallet_key(TENANT, player)
        if topic == "game.rounds":
            steps.append(Step(topic, key, json.dumps(payload).encode(), now))
        else:
            steps.append(Step(topic, key, envelope(kind, operation, payload, now, f"q{n}"), now))
        if operation:
            keyed.append((topic, player, kind, operation, payload))
    return steps


async def run_wallet(messages: list[Message], cuts: set[int], *, ahead: bool = False) -> Observed:
    """The batches one after the other or, `ahead`, as the worker runs them: each batch
    decided on the one before while that one is still to be committed."""
    table, store, outputs = DictRecordTable(), RecordingStore(), Outputs()
    deps = WalletAgentDeps(table=table, store=store, outputs=outputs, send_to_topic=outputs.send,  # type: ignore[arg-type]
                           retention_ms=72 * 3_600_000, rules=RULES, scheduler=ExpiryScheduler(),
                           partitions=PARTITIONS)
    in_flight = None
    for batch in cut(messages, cuts):
        if not ahead:
            await wallet_agent.run_batch(deps, batch)
            continue
        prepared = await wallet_agent.prepare(deps, batch, in_flight)
        if in_flight is not None and not await wallet_agent.finish(deps, in_flight):
            prepared = await wallet_agent.prepare(deps, batch)
        in_flight = prepared
    if in_flight is not None:
        await wallet_agent.finish(deps, in_flight)
    return await observe(wallet_agent.AGENT, table, store, outputs)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=wallet_steps(), cuts=CUTS)
def test_a_wallet_batch_decides_as_its_messages_one_at_a_time(steps, cuts):
    messages = messages_of(steps)
    one_by_one = asyncio.run(run_wallet(messages, set(range(1, len(messages)))))
    assert_same(asyncio.run(run_wallet(messages, cuts)), one_by_one)
    assert_same(asyncio.run(run_wallet(messages, cuts, ahead=True)), one_by_one)


# ---------------------------------------------------------------- the jackpot

SECRET = b"test-secret-of-sixteen-bytes"
POOLS = st.sampled_from(("grand", "drop", "none"))
CREATE = {
    "grand": jp.CreatePool(pool_id="grand", kind="progressive", brand_ids=("b1",), region="mt", currency="EUR",
                           server_seed_hash="", seed_minor=1_000, contribution_bps=100, odds_ppb=100_000_000),
    # Drops after a few contributions, so wins, payout requests and reseeding happen.
    "drop": jp.CreatePool(pool_id="drop", kind="must_drop", brand_ids=("b1",), region="mt", currency="EUR",
                          server_seed_hash="", seed_minor=1_000, contribution_bps=1_000, drop_min_minor=1_200,
                          drop_max_minor=1_600),
}


def jp_command(cmd: object, now_ms: int, request_id: str) -> bytes:
    return CommandEnvelope(kind=COMMAND_NAMES[type(cmd)], tenant_id=TENANT, operation_key="", request_hash="",
                           now_ms=now_ms, reply_to="replies", request_id=request_id, payload=asdict(cmd)).encode()


@st.composite
def jackpot_steps(draw: st.DrawFn) -> list[Step]:
    now = T0
    # Most runs create some pools first; the others meet pools that do not exist yet.
    steps = [Step("jp.commands", pool_key(TENANT, pool), jp_command(CREATE[pool], now, f"create-{pool}"), now)
             for pool in draw(st.lists(st.sampled_from(sorted(CREATE)), unique=True, max_size=2))]
    for n in range(draw(st.integers(1, 40))):
        now += draw(GAPS)
        pool = draw(POOLS)
        key = pool_key(TENANT, pool)
        what = draw(st.sampled_from(("create", "contribute", "contribute", "contribute", "contribute", "trigger",
                                     "credited", "failed", "read")))
        topic, value = "jp.commands", b""
        if what == "create" and pool in CREATE:
            value = jp_command(CREATE[pool], now, f"q{n}")
        elif what == "contribute":
            # A contribution id drawn twice is a replay or, with another bet, a conflict.
            cid = draw(st.sampled_from(("c1", "c2", "c3", "c4", "c5", "c6")))
            contribution = jp.Contribute(contribution_id=cid, brand_id="b1", region="", round_id=f"r-{cid}",
                                         player_id=draw(PLAYERS), bet_minor=draw(st.sampled_from((500, 2_000, 9_000))),
                                         currency="EUR")
            value = jp_command(contribution, now, f"q{n}")
        elif what == "trigger":
            trigger = jp.Trigger(draw(st.sampled_from(("t1", "t2"))), draw(PLAYERS), f"r{n}", "", "",
                                 reason="symbol")
            value = jp_command(trigger, now, f"q{n}")
        elif what in ("credited", "failed"):
            # The wallet's answers to payout requests, late, duplicated or for no such win.
            topic = f"jp.payout.{what}"
            trigger_id = draw(st.sampled_from(("t1", "t2")))
            answer = {"trigger_id": trigger_id, "amount": draw(st.sampled_from((1_000, 1_100))), "attempt": 1,
                      "reason": "aml_hold", "retryable": True, "answered_at_ms": now}
            value = json.dumps(answer).encode()
        else:  # a read, or a create for the pool nobody creates
            value = CommandEnvelope(kind=READ_POOL, tenant_id=TENANT, operation_key="", request_hash="", now_ms=now,
                                    reply_to="replies", request_id=f"q{n}", payload={}).encode()
        steps.append(Step(topic, key, value, now))
    return steps


async def run_jackpot(messages: list[Message], cuts: set[int]) -> Observed:
    table, store, outputs = DictRecordTable(), RecordingStore(), Outputs()
    deps = jackpot_agent.JackpotAgentDeps(
        table=table, store=store, send=outputs.send, outputs=outputs, seed_secret=SECRET,  # type: ignore[arg-type]
        retention_ms=72 * 3_600_000, rules=jackpot_agent.rules_from_settings(Settings.from_env({})),
        scheduler=ExpiryScheduler(), partitions=PARTITIONS)
    for batch in cut(messages, cuts):
        await jackpot_agent.run_batch(deps, batch)
    return await observe(jackpot_agent.AGENT, table, store, outputs)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=jackpot_steps(), cuts=CUTS)
def test_a_jackpot_batch_decides_as_its_messages_one_at_a_time(steps, cuts):
    messages = messages_of(steps)
    batched = asyncio.run(run_jackpot(messages, cuts))
    one_by_one = asyncio.run(run_jackpot(messages, set(range(1, len(messages)))))
    assert_same(batched, one_by_one)
