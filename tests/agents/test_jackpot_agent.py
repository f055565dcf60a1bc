"""The jackpot agent and the wallet's side of the payout saga, with in-memory tables and
outputs: operation records beside the pool record, a crash between the two writes,
replays, and duplicated, reordered saga messages."""
from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from agents.jackpot import (
    JackpotAgentDeps, apply_jackpot_envelope, apply_payout_answer, expired_operations, is_pool_key, load_pool,
    operation_store_key, rules_from_settings,
)
from agents.wallet import ExpiryScheduler, OutputBuffer, WalletAgentDeps, apply_envelope, apply_payout_request
from app.domain.jackpot import core as jp
from app.domain.jackpot.codec import decode_operation
from app.domain.wallet import core as w
from app.messages import (
    COMMAND_NAMES, PRUNE_POOL_OPERATIONS, READ_POOL, CommandEnvelope, decode_ledger_batch, decode_reply, pool_key,
    request_hash, wallet_key,
)
from config import Settings

SECRET = b"test-secret-of-sixteen-bytes"
KEY = pool_key("dev", "grand")


class Outputs:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.ledger: list[tuple[bytes, bytes]] = []
        self.flushed: list = []

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key, value))

    async def send_ledger(self, key: bytes, value: bytes) -> None:
        self.ledger.append((key, value))

    async def flush(self, snapshots, replies) -> None:
        self.flushed.append((snapshots, replies))

    def on(self, topic: str) -> list[dict]:
        return [json.loads(v) for t, _, v in self.sent if t == topic]


def jackpot_deps(table: dict | None = None, out: Outputs | None = None) -> tuple[JackpotAgentDeps, Outputs]:
    out = out or Outputs()
    deps = JackpotAgentDeps(table={} if table is None else table, send_ledger=out.send_ledger, send=out.send,
                            outputs=OutputBuffer(out.flush), seed_secret=SECRET, retention_ms=3_600_000,
                            rules=rules_from_settings(Settings.from_env({})), scheduler=ExpiryScheduler())
    return deps, out


def envelope(command: object, now_ms: int = 1_000, operation_key: str = "", reply_to: str = "") -> CommandEnvelope:
    return CommandEnvelope(kind=COMMAND_NAMES[type(command)], tenant_id="dev", operation_key=operation_key,
                           request_hash="", now_ms=now_ms, reply_to=reply_to, request_id="r1",
                           payload=asdict(command))


CREATE = jp.CreatePool(pool_id="grand", kind="progressive", brand_ids=("b1",), region="mt", currency="EUR",
                       server_seed_hash="", seed_minor=1_000, contribution_bps=100)


def contribution(cid: str, bet: int = 10_000) -> jp.Contribute:
    return jp.Contribute(contribution_id=cid, brand_id="b1", region="", round_id=f"r-{cid}", player_id="p1",
                         bet_minor=bet, currency="EUR")


async def test_contributions_keep_their_records_beside_the_pool_and_replay_what_they_emitted():
    deps, out = jackpot_deps()
    await apply_jackpot_envelope(deps, KEY, envelope(CREATE))
    await apply_jackpot_envelope(deps, KEY, envelope(contribution("c1"), 2_000))
    state = load_pool(deps.table, KEY)
    # The pool record carries only its last decision's operation record.
    assert state.size() == 1_100 and list(state.operations) == ["contribution:c1"]
    op_key = operation_store_key(KEY, "contribution:c1")
    version, record = decode_operation(deps.table[op_key])
    assert version == state.version and record.code == "ok"

    ledger_before = len(out.ledger)
    events_before = len(out.on("jp.contribution.recorded"))
    await apply_jackpot_envelope(deps, KEY, envelope(contribution("c1"), 9_999))  # redelivered later
    assert load_pool(deps.table, KEY) == state  # nothing changed ...
    # ... but everything the first run emitted went out again.
    assert len(out.ledger) == ledger_before + 1
    assert decode_ledger_batch(out.ledger[-1][1])[0] == list(record.postings)
    recorded = out.on("jp.contribution.recorded")
    assert len(recorded) == events_before + 1 and recorded[-1]["contribution_id"] == "c1"
    assert recorded[-1]["tenant_id"] == "dev" and recorded[-1]["region"] == "mt"


class CrashAfter(dict):
    """A table whose process dies after `writes` more writes."""

    def __init__(self, data: dict, writes: int) -> None:
        super().__init__(data)
        self.writes = writes

    def __setitem__(self, key, value) -> None:
        if self.writes == 0:
            raise SystemExit("kill -9")
        self.writes -= 1
        super().__setitem__(key, value)


@pytest.mark.parametrize("writes", [0, 1])
async def test_a_crash_between_the_two_writes_loses_and_doubles_nothing_whatever_the_agent_handles_next(writes):
    """kill -9 after `writes` of the contribution's two table writes (pool record, then
    its operation record). Before the contribution comes back, the agent handles the
    wallet's answer for an earlier win of the same pool (another topic, so it may come
    first): the contribution must still count exactly once, and be answered as recorded."""
    deps, out = jackpot_deps()
    await apply_jackpot_envelope(deps, KEY, envelope(CREATE))
    await apply_jackpot_envelope(deps, KEY, envelope(jp.Trigger("t1", "p1", "r1", "", "", reason="symbol"), 1_500))
    [request] = out.on("jp.payout.requested")
    crashing, _ = jackpot_deps(CrashAfter(deps.table, writes=writes))
    with pytest.raises(SystemExit):
        await apply_jackpot_envelope(crashing, KEY, envelope(contribution("c1"), 2_000, reply_to="chan"))
    survived = dict(crashing.table)
    assert (operation_store_key(KEY, "contribution:c1") in survived) is False

    restarted, out = jackpot_deps(survived)
    credited = {**request, "answered_at_ms": 2_500}
    await apply_payout_answer(restarted, KEY, json.dumps(credited).encode(), credited=True)
    await apply_jackpot_envelope(restarted, KEY, envelope(contribution("c1"), 2_000, reply_to="chan"))
    await apply_jackpot_envelope(restarted, KEY, envelope(contribution("c1"), 2_000, reply_to="chan"))
    after = load_pool(restarted.table, KEY)
    assert after.size() == 1_100 and after.totals.contributions_minor == 100
    assert after.wins["t1"].state == jp.CREDITED
    _, record = decode_operation(restarted.table[operation_store_key(KEY, "contribution:c1")])
    # Both deliveries emitted the recorded legs, which the ledger stores once.
    sent = [decode_ledger_batch(v)[0] for _, v in out.ledger]
    assert sent[-2:] == [list(record.postings)] * 2
    jp.check_pool(after)


async def test_reads_prunes_and_the_scan_of_expired_operations():
    deps, out = jackpot_deps()
    await apply_jackpot_envelope(deps, KEY, envelope(CREATE, 1_000))
    await apply_jackpot_envelope(deps, KEY, envelope(contribution("old"), 2_000))
    await apply_jackpot_envelope(deps, KEY, envelope(contribution("new"), 9_000))
    expired = expired_operations(deps.table.items(), cutoff_ms=5_000)
    assert list(expired) == [KEY]
    assert sorted(expired[KEY]) == sorted([operation_store_key(KEY, "create"),
                                           operation_store_key(KEY, "contribution:old")])
    prune = CommandEnvelope(kind=PRUNE_POOL_OPERATIONS, tenant_id="dev", operation_key="", request_hash="",
                            now_ms=10_000, reply_to="", request_id="",
                            payload={"keys": [k.decode() for k in expired[KEY]] + ["dev|other|op|x"]})
    await apply_jackpot_envelope(deps, KEY, prune)
    assert sorted(k for k in deps.table if not is_pool_key(k)) == [operation_store_key(KEY, "contribution:new")]

    read = CommandEnvelope(kind=READ_POOL, tenant_id="dev", operation_key="", request_hash="", now_ms=0,
                           reply_to="chan", request_id="q", payload={})
    await apply_jackpot_envelope(deps, KEY, read)
    await apply_jackpot_envelope(deps, pool_key("dev", "none"), read)
    await _settle()
    replies = [decode_reply(payload) for _, batch in out.flushed for _, payload in batch]
    assert [(code, body.get("size")) for _, code, body in replies[-2:]] == [("ok", 1_200), ("pool_not_found", None)]


async def _settle() -> None:
    """Let the output buffer's flush task run."""
    import asyncio

    for _ in range(20):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- the saga, both agents

def wallet_deps(out: Outputs) -> WalletAgentDeps:
    async def send_ledger(key: bytes, value: bytes) -> None:
        out.ledger.append((key, value))

    return WalletAgentDeps(table={}, send_ledger=send_ledger, outputs=OutputBuffer(out.flush), send_to_topic=out.send,
                           retention_ms=3_600_000, rules=w.Rules(), scheduler=ExpiryScheduler())


async def wallet_command(deps: WalletAgentDeps, command: object, key: str) -> tuple[str, dict]:
    payload = asdict(command)
    env = CommandEnvelope(kind=COMMAND_NAMES[type(command)], tenant_id="dev", operation_key=key,
                          request_hash=request_hash(payload), now_ms=1_000, reply_to="", request_id="",
                          payload=payload)
    return await apply_envelope(deps, wallet_key("dev", "p1"), env)


async def test_duplicated_and_reordered_saga_messages_pay_exactly_once():
    pool, pool_out = jackpot_deps()
    await apply_jackpot_envelope(pool, KEY, envelope(CREATE))
    await apply_jackpot_envelope(pool, KEY, envelope(jp.Trigger("t1", "p1", "r1", "", "", reason="symbol"), 2_000))
    [request] = pool_out.on("jp.payout.requested")
    assert request["idempotency_key"] == "jp_p_grand_t1" and request["amount"] == 1_000

    wallet_out = Outputs()
    wallet = wallet_deps(wallet_out)
    await wallet_command(wallet, w.CreatePlayer("p1", "EUR", "MT"), "player:p1")
    await wallet_command(wallet, w.SetPlayerStatus("VERIFIED", True), "")
    raw = json.dumps(request).encode()
    await apply_payout_request(wallet, wallet_key("dev", "p1"), raw)
    [failed] = wallet_out.on("jp.payout.failed")
    assert (failed["reason"], failed["retryable"], failed["attempt"]) == ("aml_hold", True, 1)
    assert failed["brand_id"] == "b1" and failed["region"] == "mt" and failed["tenant_id"] == "dev"

    await wallet_command(wallet, w.SetPlayerStatus("VERIFIED", False), "")
    for _ in range(3):  # the same request delivered three times: one credit, three answers
        await apply_payout_request(wallet, wallet_key("dev", "p1"), raw)
    credited = wallet_out.on("jp.payout.credited")
    assert len(credited) == 3
    cash = load_wallet_cash(wallet)
    assert cash == 1_000

    # The answers reach the pool late and out of order: the credit before the failure, twice.
    answers = [(True, credited[0]), (False, failed), (True, credited[1]), (False, failed)]
    for is_credit, message in answers:
        await apply_payout_answer(pool, KEY, json.dumps(message).encode(), credited=is_credit)
    state = load_pool(pool.table, KEY)
    assert state.wins["t1"].state == jp.CREDITED
    assert jp.next_timer_ms(state, pool.rules) is None  # nothing more to send
    # The trigger delivered again replays its answer but does not ask the wallet again:
    # the win is credited, and a wallet that has forgotten the key would pay twice.
    await apply_jackpot_envelope(pool, KEY, envelope(jp.Trigger("t1", "p1", "r1", "", "", reason="symbol"), 2_000))
    assert len(pool_out.on("jp.payout.requested")) == 1


def load_wallet_cash(deps: WalletAgentDeps) -> int:
    from agents.wallet import load_state

    return load_state(deps.table, wallet_key("dev", "p1"), "dev").balance("CASH", "EUR")
