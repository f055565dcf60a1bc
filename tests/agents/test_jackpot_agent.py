"""The jackpot agent and the wallet's side of the payout saga, batch by batch with
in-memory tables, store and outputs: answers stored with the batch, a crash before the
commit, replays, and duplicated, reordered saga messages."""
from __future__ import annotations

import asyncio
import json
from dataclasses import asdict

import pytest

from agents.batch import DictRecordTable, Message
from agents.jackpot import AGENT, JackpotAgentDeps, load_pool, rules_from_settings, run_batch
from agents.runtime import OutputBuffer
from agents.wallet import ExpiryScheduler, WalletAgentDeps
from agents.wallet import run_batch as run_wallet_batch
from app.domain.jackpot import core as jp
from app.domain.wallet import core as w
from app.messages import COMMAND_NAMES, READ_POOL, CommandEnvelope, decode_reply, pool_key, request_hash, wallet_key
from config import Settings
from storage.memory.stores import MemoryAgentStore
from storage.ports import BatchCommit
from tables.pools import decode_operation

SECRET = b"test-secret-of-sixteen-bytes"
KEY = pool_key("dev", "grand")


class Outputs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.flushed: list = []

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    async def flush(self, snapshots, replies) -> None:
        self.flushed.append((snapshots, replies))

    def on(self, topic: str) -> list[dict]:
        return [json.loads(v) for t, _, v in self.sent if t == topic]


def jackpot_deps(store: MemoryAgentStore | None = None, table: DictRecordTable | None = None,
                 out: Outputs | None = None) -> tuple[JackpotAgentDeps, Outputs]:
    out = out or Outputs()
    deps = JackpotAgentDeps(table=table or DictRecordTable(), store=store or MemoryAgentStore(), send=out.send,
                            outputs=OutputBuffer(out.flush), seed_secret=SECRET, retention_ms=3_600_000,
                            rules=rules_from_settings(Settings.from_env({})), scheduler=ExpiryScheduler(),
                            partitions=1)
    return deps, out


OFFSET = [0]


def message(value: bytes, topic: str = "jp.commands", key: bytes = KEY) -> Message:
    OFFSET[0] += 1
    return Message(topic, 0, OFFSET[0], key, value, 0)


def command(cmd: object, now_ms: int = 1_000, operation_key: str = "", reply_to: str = "") -> Message:
    env = CommandEnvelope(kind=COMMAND_NAMES[type(cmd)], tenant_id="dev", operation_key=operation_key,
                          request_hash="", now_ms=now_ms, reply_to=reply_to, request_id="r1", payload=asdict(cmd))
    return message(env.encode())


async def apply(deps: JackpotAgentDeps, *messages: Message) -> None:
    await run_batch(deps, list(messages))


CREATE = jp.CreatePool(pool_id="grand", kind="progressive", brand_ids=("b1",), region="mt", currency="EUR",
                       server_seed_hash="", seed_minor=1_000, contribution_bps=100)


def contribution(cid: str, bet: int = 10_000) -> jp.Contribute:
    return jp.Contribute(contribution_id=cid, brand_id="b1", region="", round_id=f"r-{cid}", player_id="p1",
                         bet_minor=bet, currency="EUR")


async def test_contributions_are_answered_from_the_store_and_replay_what_they_emitted():
    store = MemoryAgentStore()
    deps, out = jackpot_deps(store)
    await apply(deps, command(CREATE), command(contribution("c1"), 2_000))
    state = load_pool(deps.table, KEY)
    # The pool record carries no answers; the contribution's is stored with its batch.
    assert state.size() == 1_100 and state.operations == {}
    version, record = decode_operation(store.answers_by_agent[AGENT][(KEY, "contribution:c1")][0])
    assert version == state.version and record.code == "ok"
    rows = len(store.ledger._rows)

    await apply(deps, command(contribution("c1"), 9_999))  # redelivered later, in another batch
    assert load_pool(deps.table, KEY) == state  # nothing changed ...
    # ... the event went out again, and no posting was written twice.
    recorded = out.on("jp.contribution.recorded")
    assert [r["contribution_id"] for r in recorded] == ["c1", "c1"]
    assert recorded[-1]["tenant_id"] == "dev" and recorded[-1]["region"] == "mt"
    assert len(store.ledger._rows) == rows


async def test_a_crash_before_the_commit_loses_and_doubles_nothing_whatever_the_agent_handles_next():
    """kill -9 while the batch with a contribution commits. Before the contribution comes
    back, the agent handles the wallet's answer for an earlier win of the same pool
    (another topic, so it may come first): the contribution must still count exactly
    once, and be answered as recorded."""
    store = MemoryAgentStore()
    deps, out = jackpot_deps(store)
    await apply(deps, command(CREATE), command(jp.Trigger("t1", "p1", "r1", "", "", reason="symbol"), 1_500))
    [request] = out.on("jp.payout.requested")
    real_commit = store.commit

    async def die(commit: BatchCommit) -> None:
        raise SystemExit("kill -9")

    store.commit = die  # type: ignore[method-assign]
    contributed = command(contribution("c1"), 2_000, reply_to="chan")
    with pytest.raises(SystemExit):
        await apply(deps, contributed)
    store.commit = real_commit  # type: ignore[method-assign]
    assert (KEY, "contribution:c1") not in store.answers_by_agent[AGENT]

    restarted, out = jackpot_deps(store, DictRecordTable(dict(deps.table.data)))
    credited = {**request, "answered_at_ms": 2_500}
    await apply(restarted, message(json.dumps(credited).encode(), "jp.payout.credited"))
    await apply(restarted, contributed)
    await apply(restarted, contributed)
    after = load_pool(restarted.table, KEY)
    assert after.size() == 1_100 and after.totals.contributions_minor == 100
    assert after.wins["t1"].state == jp.CREDITED
    await _settle()
    replies = [decode_reply(payload)[1] for _, batch in out.flushed for _, payload in batch]
    assert replies == ["ok", "ok"]
    jp.check_pool(after)


async def test_reads_and_an_unknown_pool():
    deps, out = jackpot_deps()
    await apply(deps, command(CREATE, 1_000), command(contribution("a"), 2_000), command(contribution("b"), 9_000))
    read = CommandEnvelope(kind=READ_POOL, tenant_id="dev", operation_key="", request_hash="", now_ms=0,
                           reply_to="chan", request_id="q", payload={})
    await apply(deps, message(read.encode()), message(read.encode(), key=pool_key("dev", "none")))
    await _settle()
    replies = [decode_reply(payload) for _, batch in out.flushed for _, payload in batch]
    assert [(code, body.get("size")) for _, code, body in replies[-2:]] == [("ok", 1_200), ("pool_not_found", None)]


async def test_a_stored_answer_still_replays_after_a_field_is_added_to_its_command():
    import dataclasses

    store = MemoryAgentStore()
    deps, _ = jackpot_deps(store)
    await apply(deps, command(CREATE), command(contribution("c1"), 2_000))
    # The next version's command has a field more, with a default.
    Wider = dataclasses.make_dataclass("Contribute", [("channel", str, dataclasses.field(default=""))],
                                       bases=(jp.Contribute,), frozen=True)
    wider = Wider(**asdict(contribution("c1")))
    assert jp.request_hash(wider) == jp.request_hash(contribution("c1"))
    _, record = decode_operation(store.answers_by_agent[AGENT][(KEY, "contribution:c1")][0])
    assert jp.same_request(record.request_hash, wider, jp.request_hash(wider))
    assert not jp.same_request(record.request_hash, wider, jp.request_hash(contribution("c2")))


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- the saga, both agents

def wallet_deps(out: Outputs) -> WalletAgentDeps:
    return WalletAgentDeps(table=DictRecordTable(), store=MemoryAgentStore(), outputs=OutputBuffer(out.flush),
                           send_to_topic=out.send, retention_ms=3_600_000, rules=w.Rules(),
                           scheduler=ExpiryScheduler(), partitions=1)


async def wallet_command(deps: WalletAgentDeps, cmd: object, key: str) -> None:
    payload = asdict(cmd)
    env = CommandEnvelope(kind=COMMAND_NAMES[type(cmd)], tenant_id="dev", operation_key=key,
                          request_hash=request_hash(payload), now_ms=1_000, reply_to="", request_id="",
                          payload=payload)
    await run_wallet_batch(deps, [message(env.encode(), "wallet.commands", wallet_key("dev", "p1"))])


async def payout_request(deps: WalletAgentDeps, raw: bytes) -> None:
    await run_wallet_batch(deps, [message(raw, "jp.payout.requested", wallet_key("dev", "p1"))])


async def test_duplicated_and_reordered_saga_messages_pay_exactly_once():
    pool, pool_out = jackpot_deps()
    await apply(pool, command(CREATE), command(jp.Trigger("t1", "p1", "r1", "", "", reason="symbol"), 2_000))
    [request] = pool_out.on("jp.payout.requested")
    assert request["idempotency_key"] == "jp_p_grand_t1" and request["amount"] == 1_000

    wallet_out = Outputs()
    wallet = wallet_deps(wallet_out)
    await wallet_command(wallet, w.CreatePlayer("p1", "EUR", "MT"), "player:p1")
    await wallet_command(wallet, w.SetPlayerStatus("VERIFIED", True), "")
    raw = json.dumps(request).encode()
    await payout_request(wallet, raw)
    [failed] = wallet_out.on("jp.payout.failed")
    assert (failed["reason"], failed["retryable"], failed["attempt"]) == ("aml_hold", True, 1)
    assert failed["brand_id"] == "b1" and failed["region"] == "mt" and failed["tenant_id"] == "dev"

    await wallet_command(wallet, w.SetPlayerStatus("VERIFIED", False), "")
    for _ in range(3):  # the same request delivered three times: one credit, three answers
        await payout_request(wallet, raw)
    credited = wallet_out.on("jp.payout.credited")
    assert len(credited) == 3
    assert load_wallet_cash(wallet) == 1_000

    # The answers reach the pool late and out of order: the credit before the failure, twice,
    # all in one batch.
    answers = [("jp.payout.credited", credited[0]), ("jp.payout.failed", failed),
               ("jp.payout.credited", credited[1]), ("jp.payout.failed", failed)]
    await apply(pool, *(message(json.dumps(m).encode(), topic) for topic, m in answers))
    state = load_pool(pool.table, KEY)
    assert state.wins["t1"].state == jp.CREDITED
    assert jp.next_timer_ms(state, pool.rules) is None  # nothing more to send
    # The trigger delivered again replays its answer but does not ask the wallet again:
    # the win is credited, and a wallet that has forgotten the key would pay twice.
    await apply(pool, command(jp.Trigger("t1", "p1", "r1", "", "", reason="symbol"), 2_000))
    assert len(pool_out.on("jp.payout.requested")) == 1


def load_wallet_cash(deps: WalletAgentDeps) -> int:
    from agents.wallet import load_state

    return load_state(deps.table, wallet_key("dev", "p1"), "dev").balance("CASH", "EUR")
