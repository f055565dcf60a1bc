"""The wallet agent: as a Faust agent fed through its inbox as the consumer feeds it (real
agent wiring and table), and batch by batch with an in-memory table and store, where crashes and refused commits are staged."""
from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from faust.types.tuples import Message as ConsumerMessage

from agents.batch import DictRecordTable, Message, partition_of
from agents.runtime import OutputBuffer, WorkerResources, restore, run_batches
from agents.wallet import AGENT, ExpiryScheduler, WalletAgentDeps, decode_answer, finish, load_state, prepare, run_batch
from agents.worker import build_worker
from app.domain.wallet.core import Rules
from app.messages import CommandEnvelope, decode_reply, request_hash, wallet_key
from app.streaming import Inbox
from app.topics import WALLET_COMMANDS, topic_name
from config import Settings
from storage.memory.stores import MemoryAgentStore, MemoryPoolCache, MemoryWalletCache
from storage.ports import BatchCommit
from tables.wallets import decode_state, encode_state, record_version

KEY = wallet_key("dev", "p1")
PSP = {"psp": "sandbox", "event_id": "e1", "deposit_id": "d1", "status": "SUCCEEDED", "amount_minor": 5_000,
       "currency": "EUR", "fee_minor": 100}


class MemoryResources(WorkerResources):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cache = MemoryWalletCache()
        self.pool_cache = MemoryPoolCache()
        self.replies: list[tuple[str, bytes]] = []
        self.store = MemoryAgentStore()

    async def flush_outputs(self, snapshots, replies) -> None:
        for kind, tenant_id, subject_id, version, snapshot_json in snapshots:
            cache = self.pool_cache if kind == "pool" else self.cache
            await cache.put(tenant_id, subject_id, version, snapshot_json, 30)
        self.replies.extend(replies)

    async def announce(self, worker_id: str, partitions: list[int], metrics_url: str) -> None:
        pass

    async def agent_store(self):
        return self.store

    async def ledger_store(self):
        return self.store.ledger


def envelope(kind: str, key: str, payload: dict, now_ms: int = 1_000, reply_to: str = "replies") -> bytes:
    return CommandEnvelope(kind=kind, tenant_id="dev", operation_key=key, request_hash=request_hash(payload),
                           now_ms=now_ms, reply_to=reply_to, request_id=key, payload=payload).encode()


CREATE = ("create_player", "player:p1", {"player_id": "p1", "currency": "EUR", "country": "DE"})
DEPOSIT = ("request_deposit", "deposit:k1", {"deposit_id": "d1", "player_id": "p1", "amount_minor": 5_000,
                                             "currency": "EUR", "method": "card"})
VERDICT = ("apply_psp_result", "psp:sandbox:e1", PSP)


async def test_wallet_agent_decides_commits_and_answers_through_faust():
    settings = Settings.from_env({"TOPIC_PARTITIONS": "1"})
    resources = MemoryResources(settings)
    app = build_worker(settings, worker_id="test", resources=resources)
    app.finalize()
    app.flow_control.resume()
    agent = app.agents["wallet"]
    table = app.tables["wallets"]

    topic = topic_name(settings, WALLET_COMMANDS)
    async with agent.test_context():
        # The PSP delivers the same event twice.
        fetched = [ConsumerMessage(topic, 0, offset, time.time(), 0, [], KEY, envelope(*command), None)
                   for offset, command in enumerate((CREATE, DEPOSIT, VERDICT, VERDICT))]
        app.inboxes[topic].put(fetched)
        await _until(lambda: len(resources.replies) == 4)
        # Acknowledged once committed, so the consumer may commit past them.
        await _until(lambda: all(m.acked for m in fetched))

    state = decode_state(table[KEY])
    assert state.balance("CASH", "EUR") == 4_900 and state.version == 3
    replies = [decode_reply(payload) for _, payload in resources.replies]
    assert [code for _, code, _ in replies] == ["created", "accepted", "ok", "ok"]
    assert replies[2][2] == replies[3][2] == {"deposit_id": "d1", "state": "SUCCEEDED", "credited": 4_900}
    # What the client was told is in the store: the record, the answers, the postings once.
    version, _, stored = resources.store.records_by_agent[AGENT][KEY]
    assert version == 3 and decode_state(stored) == state
    assert set(k for _, k in resources.store.answers_by_agent[AGENT]) == {"player:p1", "deposit:k1",
                                                                          "psp:sandbox:e1"}
    legs = await resources.store.ledger.entries("dev", "deposit:d1")
    assert [(p.leg, p.amount_minor) for p in legs] == [(0, 5_000), (1, 100)]
    snapshot = json.loads(await resources.cache.get("dev", "p1"))
    assert snapshot["wallets"][0]["available"] == 4_900 and snapshot["version"] == 3


# ---------------------------------------------------------------- batch by batch

class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.replies: list[tuple[str, bytes]] = []

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.messages.append((topic, key, value))

    async def flush(self, snapshots, replies) -> None:
        self.replies.extend(replies)

    def codes(self) -> list[str]:
        return [decode_reply(payload)[1] for _, payload in self.replies]


def deps_with(store: MemoryAgentStore, table: DictRecordTable | None = None,
              rules: Rules = Rules()) -> tuple[WalletAgentDeps, Sent]:
    sent = Sent()
    deps = WalletAgentDeps(table=table or DictRecordTable(), store=store, outputs=OutputBuffer(sent.flush),
                           send_to_topic=sent.send, retention_ms=3_600_000, rules=rules,
                           scheduler=ExpiryScheduler(), partitions=1)
    return deps, sent


OFFSET = [0]


def batch(*commands: tuple, key: bytes = KEY, now_ms: int = 1_000) -> list[Message]:
    out = []
    for kind, op, payload in commands:
        OFFSET[0] += 1
        out.append(Message("wallet.commands", 0, OFFSET[0], key, envelope(kind, op, payload, now_ms), now_ms))
    return out


async def test_a_batch_commits_once_and_nothing_leaves_before_the_commit():
    store = MemoryAgentStore()
    deps, sent = deps_with(store)
    attempts = []
    real_commit = store.commit

    async def flaky_commit(commit: BatchCommit) -> None:
        attempts.append(len(sent.replies) + len(deps.table.changelog))
        if len(attempts) < 3:
            raise ConnectionError("PostgreSQL restarting")
        await real_commit(commit)

    store.commit = flaky_commit  # type: ignore[method-assign]
    await run_batch(deps, batch(CREATE, DEPOSIT, VERDICT, VERDICT))
    await _settle()
    # Two failed attempts, retried with nothing emitted in between; one commit for the batch.
    assert attempts == [0, 0, 0] and store.commits == 1
    assert sent.codes() == ["created", "accepted", "ok", "ok"]
    # One changelog write per record per batch, of the version that was committed.
    assert [(p, k) for p, k, _ in deps.table.changelog] == [(0, KEY)]
    assert record_version(deps.table.changelog[0][2]) == 3
    assert await store.ledger.positions(AGENT) == {("wallet.commands", 0): OFFSET[0] + 1}


async def test_a_crash_during_the_commit_answers_nothing_and_the_redelivery_applies_once():
    store = MemoryAgentStore()
    deps, sent = deps_with(store)
    await run_batch(deps, batch(CREATE))
    messages = batch(DEPOSIT, VERDICT)

    async def die(commit: BatchCommit) -> None:
        raise SystemExit("kill -9")

    real_commit, store.commit = store.commit, die  # type: ignore[method-assign]
    with pytest.raises(SystemExit):
        await run_batch(deps, messages)
    await _settle()
    assert sent.codes() == ["created"] and load_state(deps.table, KEY, "dev").version == 1

    store.commit = real_commit  # type: ignore[method-assign]
    restarted, sent_again = deps_with(store, DictRecordTable(dict(deps.table.data)))
    await run_batch(restarted, messages)
    await run_batch(restarted, messages)  # and once more, as if the offsets were never committed
    await _settle()
    assert sent_again.codes() == ["accepted", "ok", "accepted", "ok"]
    assert load_state(restarted.table, KEY, "dev").balance("CASH", "EUR") == 4_900
    assert len(await store.ledger.entries("dev", "deposit:d1")) == 2


async def test_an_answer_older_than_the_window_is_replayed_from_the_store():
    store = MemoryAgentStore()
    deps, sent = deps_with(store, rules=Rules(operation_window_count=2))
    await run_batch(deps, batch(CREATE, DEPOSIT, VERDICT))
    for n in range(3):  # push the deposit's answer out of the record's window
        await run_batch(deps, batch(("set_limits", f"limits:{n}", {"amounts": [["deposit", "day", 10_000 + n]]})))
    assert "deposit:k1" not in load_state(deps.table, KEY, "dev").operations
    await run_batch(deps, batch(DEPOSIT))
    changed = dict(DEPOSIT[2], amount_minor=7)
    await run_batch(deps, batch(("request_deposit", "deposit:k1", changed)))
    # A new key for the same deposit id: the id is claimed, though the record forgot it.
    await run_batch(deps, batch(("request_deposit", "deposit:k2", DEPOSIT[2])))
    await _settle()
    assert sent.codes()[-3:] == ["accepted", "idempotency_conflict", "deposit_exists"]
    first, replayed, _ = [decode_reply(p)[2] for _, p in sent.replies if decode_reply(p)[0] == "deposit:k1"]
    assert first == replayed == {"deposit_id": "d1", "state": "PENDING"}
    assert decode_answer(store.answers_by_agent[AGENT][(KEY, "deposit:k1")][0]).code == "accepted"


async def test_a_record_written_meanwhile_by_another_worker_is_reloaded_and_decided_again():
    store = MemoryAgentStore()
    old, _ = deps_with(store)
    await run_batch(old, batch(CREATE, DEPOSIT))
    new, _ = deps_with(store, DictRecordTable(dict(old.table.data)))
    await run_batch(new, batch(VERDICT))  # the partition moved: the new owner credits the deposit
    # The old owner, which missed that, decides a withdrawal request on its stale record.
    await run_batch(old, batch(("set_player_status", "kyc:1", {"kyc_status": "VERIFIED", "aml_hold": False})))
    state = load_state(old.table, KEY, "dev")
    assert state.balance("CASH", "EUR") == 4_900 and state.kyc_status == "VERIFIED" and state.version == 4
    assert store.records_by_agent[AGENT][KEY][0] == 4


async def test_a_batch_decided_on_one_whose_commit_was_refused_is_decided_again():
    """The worker decides a batch while the one before is committed. When that commit is
    refused (another worker wrote the record meanwhile) and the batch before is decided
    again, the batch decided on it no longer holds: it is decided again on what was
    committed. Here it would otherwise refuse a bet for want of a credit it never saw."""
    store = MemoryAgentStore()
    old, sent = deps_with(store)
    await run_batch(old, batch(CREATE, DEPOSIT))
    new, _ = deps_with(store, DictRecordTable(dict(old.table.data)))
    await run_batch(new, batch(VERDICT))  # the partition moved and came back: 4,900 credited meanwhile
    real_commit, decided_on = store.commit, []

    async def slow_commit(commit: BatchCommit) -> None:
        await asyncio.sleep(0.05)  # so that the next batch is decided while this one commits
        await real_commit(commit)

    async def prepare_noting(messages, prior):  # type: ignore[no-untyped-def]
        prepared = await prepare(old, messages, prior)
        decided_on.append(prepared.decided.states[KEY].balance("CASH", "EUR"))
        return prepared

    store.commit = slow_commit  # type: ignore[method-assign]
    acked: list = []
    app = SimpleNamespace(consumer=SimpleNamespace(ack=acked.append), crash=None)
    inbox = Inbox(["wallet.commands"], max_pending=10)
    fetched = [ConsumerMessage(m.topic, m.partition, m.offset, m.timestamp_ms / 1000, 0, [], m.key, m.value, None)
               for m in batch(("set_player_status", "kyc:1", {"kyc_status": "VERIFIED", "aml_hold": False}),
                              ("place_bet", "bet:b1", {"bet_id": "b1", "amount_minor": 4_000, "currency": "EUR",
                                                       "policy": "casino", "provider": "house"}))]
    inbox.put(fetched)
    running = asyncio.ensure_future(run_batches(app, inbox, Settings.from_env({"WORKER_BATCH_MAX": "1"}),
                                                prepare_noting, lambda prepared: finish(old, prepared)))
    await _until(lambda: len(acked) == 2)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    await _settle()
    # The balances each decision left: the bet was first decided on the kyc batch's
    # record, without the credit (refused: nothing staked), then again on the stored one.
    assert decided_on == [0, 0, 900]
    assert sent.codes()[-2:] == ["ok", "created"] and acked == fetched
    state = load_state(old.table, KEY, "dev")
    assert state.balance("CASH", "EUR") == 900 and state.kyc_status == "VERIFIED" and state.version == 5
    assert store.records_by_agent[AGENT][KEY][0] == 5


async def test_an_id_claimed_by_another_player_meanwhile_is_refused():
    store = MemoryAgentStore()
    other = wallet_key("dev", "p2")
    deps, sent = deps_with(store)
    await run_batch(deps, batch(CREATE) + batch(("create_player", "player:p2",
                                                 {"player_id": "p2", "currency": "EUR", "country": "DE"}), key=other))
    await run_batch(deps, batch(DEPOSIT))
    # p2's request for the same deposit id, from a worker that has not seen p1's claim.
    await run_batch(deps, batch(("request_deposit", "deposit:x", dict(DEPOSIT[2], player_id="p2")), key=other))
    await _settle()
    assert sent.codes()[-1] == "deposit_exists"
    assert store.routes[("dev", "deposit:d1")] == "p1"


async def test_an_undecodable_message_is_skipped_not_fatal():
    from app.metrics import POISON_MESSAGES

    store = MemoryAgentStore()
    deps, sent = deps_with(store)
    before = POISON_MESSAGES._value.get()
    await run_batch(deps, [Message("wallet.commands", 0, 1, KEY, b"\xc1 not msgpack", 0),
                           Message("wallet.commands", 0, 2, b"no-tenant", b"x", 0)])
    assert POISON_MESSAGES._value.get() == before + 2
    assert deps.table.data == {} and sent.messages == [] and store.ledger._rows == {}


async def test_a_worker_restores_what_its_changelog_lacks_or_has_older():
    store = MemoryAgentStore()
    deps, _ = deps_with(store)
    other = wallet_key("dev", "p2")
    await run_batch(deps, batch(CREATE))
    first_version = deps.table.changelog[0][2]
    await run_batch(deps, batch(DEPOSIT, VERDICT) + batch(
        ("create_player", "player:p2", {"player_id": "p2", "currency": "EUR", "country": "DE"}), key=other))
    # A changelog that has p1's first version only, and nothing of p2.
    behind = DictRecordTable({KEY: first_version})
    assert await restore(behind, store, AGENT, {partition_of(KEY, 1)}, record_version) == 2
    assert behind.data == deps.table.data
    assert await restore(behind, store, AGENT, {0}, record_version) == 0  # up to date: nothing to do


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def _until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the outputs were not flushed")
        await asyncio.sleep(0.005)


async def test_output_buffer_keeps_the_newest_snapshot_and_survives_a_failed_flush():
    flushed: list = []
    fail = [True]
    gate = asyncio.Event()

    async def flush(snapshots, replies) -> None:
        await gate.wait()
        if fail[0]:
            fail[0] = False
            raise ConnectionError("Redis restarting")
        flushed.append((sorted(snapshots), list(replies)))

    buffer = OutputBuffer(flush)
    buffer.snapshot("dev", "p1", 1, "{v1}")
    await asyncio.sleep(0)  # the first flush starts and waits at the gate with version 1
    buffer.snapshot("dev", "p1", 2, "{v2}")
    buffer.snapshot("dev", "p1", 3, "{v3}")
    buffer.snapshot("dev", "p2", 7, "{p2}")
    buffer.reply("chan", b"a")
    gate.set()
    await _until(lambda: len(flushed) == 1)
    # The first batch was lost to the failure; the second carries only the newest snapshots.
    assert flushed == [([("wallet", "dev", "p1", 3, "{v3}"), ("wallet", "dev", "p2", 7, "{p2}")], [("chan", b"a")])]


def test_a_hot_key_reaches_the_changelog_at_most_once_per_interval():
    from agents.batch import FaustRecordTable

    class Table:
        def __init__(self) -> None:
            self.data: dict = {}
            self.sent: list = []

        def send_changelog(self, partition, key, value) -> None:
            self.sent.append((partition, key, value))

    faust_table = Table()
    table = FaustRecordTable(faust_table, changelog_interval_ms=10_000)
    table.write(3, [(b"t|a", b"a1"), (b"t|b", b"b1")], now_ms=1_000)
    table.write(3, [(b"t|a", b"a2")], now_ms=2_000)
    table.write(3, [(b"t|a", b"a3")], now_ms=3_000)
    # The store has every version at once; the changelog the first, then the newest when due.
    assert faust_table.data == {b"t|a": b"a3", b"t|b": b"b1"}
    assert faust_table.sent == [(3, b"t|a", b"a1"), (3, b"t|b", b"b1")]
    assert table.flush_changelog({3}, now_ms=5_000) == 0
    assert table.flush_changelog({3}, now_ms=11_000) == 1
    assert faust_table.sent[-1] == (3, b"t|a", b"a3")
    table.write(3, [(b"t|b", b"b2")], now_ms=12_000)
    assert table.flush_changelog(set(), now_ms=30_000) == 0  # the partition moved: its new owner restored it
    table.write(5, [(b"t|c", b"c1")], now_ms=30_000)
    assert faust_table.sent[-1] == (5, b"t|c", b"c1")
    assert FaustRecordTable(Table(), 0).changelog_interval_ms == 0


def _round(n: int, win: int = 0) -> tuple:
    payload = {"round_id": f"r{n}", "provider": "acme", "bet_minor": 100, "win_minor": win, "currency": "EUR",
               "policy": "casino", "brand_id": "", "region": "", "jackpots": []}
    return "play_round", f"round:acme:r{n}", payload


async def test_an_answer_the_batch_itself_pushes_out_of_the_window_still_replays():
    store = MemoryAgentStore()
    deps, sent = deps_with(store, rules=Rules(operation_window_count=2))
    funding = ("adjust", "adjustment:f", {"adjustment_id": "f", "wallet": "CASH", "currency": "EUR",
                                          "amount_minor": 10_000, "reason": "test"})
    await run_batch(deps, batch(CREATE, funding, _round(1, win=500)))
    assert "round:acme:r1" in load_state(deps.table, KEY, "dev").operations
    # Two new rounds push r1 out of the record's window, then r1 comes again, in one batch.
    await run_batch(deps, batch(_round(2), _round(3), _round(1, win=500)))
    await _settle()
    assert sent.codes()[-1] == "ok"
    assert load_state(deps.table, KEY, "dev").balance("CASH", "EUR") == 10_000 - 300 + 500


async def test_an_operation_whose_answer_expired_is_refused_not_applied_twice():
    store = MemoryAgentStore()
    deps, sent = deps_with(store)
    funding = ("adjust", "adjustment:f", {"adjustment_id": "f", "wallet": "CASH", "currency": "EUR",
                                          "amount_minor": 10_000, "reason": "test"})
    await run_batch(deps, batch(CREATE, funding, _round(1, win=500)))
    # The retention passed: the round's answer is gone from the store and from the record.
    store.answers_by_agent[AGENT].clear()
    state = load_state(deps.table, KEY, "dev")
    import dataclasses
    deps.table.load([(KEY, encode_state(dataclasses.replace(state, operations={})))])
    await run_batch(deps, batch(_round(1, win=500), _round(2)))
    await _settle()
    assert sent.codes()[-2:] == ["operation_already_applied", "ok"]
    assert load_state(deps.table, KEY, "dev").balance("CASH", "EUR") == 10_000 - 200 + 500
    assert len(await store.ledger.entries("dev", "round:acme:r1:p1")) == 3
