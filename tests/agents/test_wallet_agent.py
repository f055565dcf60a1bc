"""The wallet agent through Faust's test_context(): real agent wiring and table, with
in-memory adapters in place of Redis and PostgreSQL."""
from __future__ import annotations

import json

from agents.worker import WorkerResources, build_worker
from app.domain.wallet.codec import decode_state
from app.messages import CommandEnvelope, decode_ledger_batch, decode_reply, request_hash, wallet_key
from config import Settings
from storage.memory.stores import MemoryLedgerStore, MemoryPoolCache, MemoryWalletCache


class MemoryResources(WorkerResources):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cache = MemoryWalletCache()
        self.pool_cache = MemoryPoolCache()
        self.replies: list[tuple[str, bytes]] = []
        self.store = MemoryLedgerStore()
        self.postings: list[tuple[bytes, bytes]] = []

    def postings_sender(self, streams):
        async def send(key: bytes, value: bytes) -> None:
            self.postings.append((key, value))

        return send

    async def flush_outputs(self, snapshots, replies) -> None:
        for kind, tenant_id, subject_id, version, snapshot_json in snapshots:
            cache = self.pool_cache if kind == "pool" else self.cache
            await cache.put(tenant_id, subject_id, version, snapshot_json, 30)
        self.replies.extend(replies)

    async def announce(self, worker_id: str, partitions: list[int], metrics_url: str) -> None:
        pass

    async def ledger_store(self):
        return self.store


def envelope(kind: str, key: str, payload: dict, now_ms: int = 1_000) -> bytes:
    return CommandEnvelope(kind=kind, tenant_id="dev", operation_key=key, request_hash=request_hash(payload),
                           now_ms=now_ms, reply_to="replies", request_id=key, payload=payload).encode()


async def test_wallet_agent_decides_stores_and_emits():
    settings = Settings.from_env({"TOPIC_PARTITIONS": "1"})
    resources = MemoryResources(settings)
    app = build_worker(settings, worker_id="test", resources=resources)
    app.finalize()
    app.flow_control.resume()
    agent = app.agents["wallet"]
    key = wallet_key("dev", "p1")
    table = app.tables["wallets"]

    async with agent.test_context() as agent_ctx:
        await agent_ctx.put(envelope("create_player", "player:p1",
                                     {"player_id": "p1", "currency": "EUR", "country": "DE"}), key=key)
        await agent_ctx.put(envelope("request_deposit", "deposit:k1",
                                     {"deposit_id": "d1", "player_id": "p1", "amount_minor": 5_000,
                                      "currency": "EUR", "method": "card"}), key=key)
        psp = {"psp": "sandbox", "event_id": "e1", "deposit_id": "d1", "status": "SUCCEEDED",
               "amount_minor": 5_000, "currency": "EUR", "fee_minor": 100}
        await agent_ctx.put(envelope("apply_psp_result", "psp:sandbox:e1", psp), key=key)
        # The PSP delivers the same event again: same answer, same postings, state unchanged.
        await agent_ctx.put(envelope("apply_psp_result", "psp:sandbox:e1", psp), key=key)

        await _until(lambda: len(resources.replies) == 4)
        state = decode_state(table[key])
        assert state.balance("CASH", "EUR") == 4_900
        assert state.version == 3

        replies = [decode_reply(payload) for _, payload in resources.replies]
        assert [code for _, code, _ in replies] == ["created", "accepted", "ok", "ok"]
        assert replies[2][2] == replies[3][2] == {"deposit_id": "d1", "state": "SUCCEEDED", "credited": 4_900}

        snapshot = json.loads(await resources.cache.get("dev", "p1"))
        assert snapshot["wallets"][0]["available"] == 4_900 and snapshot["version"] == 3

        # Both runs of the webhook emitted the same two legs to the ledger topic.
        sent = [decode_ledger_batch(value)[0] for _, value in resources.postings]
        assert len(sent) == 2 and sent[0] == sent[1]
        assert [(p.leg, p.amount_minor) for p in sent[0]] == [(0, 5_000), (1, 100)]



async def test_an_undecodable_message_is_skipped_not_fatal():
    from agents.wallet import ExpiryScheduler, OutputBuffer, WalletAgentDeps, handle_wallet_message
    from app.domain.wallet.core import Rules
    from app.metrics import POISON_MESSAGES

    replies: list = []

    async def publish(snapshots, batch) -> None:
        replies.extend(batch)

    async def send(key: bytes, value: bytes) -> None:
        raise AssertionError("nothing may be emitted for a poison message")

    deps = WalletAgentDeps(table={}, send_ledger=send, outputs=OutputBuffer(publish), send_to_topic=send,
                           retention_ms=1, rules=Rules(), scheduler=ExpiryScheduler())
    before = POISON_MESSAGES._value.get()
    await handle_wallet_message(deps, b"dev|p1", b"\xc1 not msgpack")
    assert POISON_MESSAGES._value.get() == before + 1
    assert deps.table == {} and replies == []



async def _until(condition, timeout_s: float = 5.0) -> None:
    """Wait for the agent's output buffer to flush what the commands produced."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the outputs were not flushed")
        await asyncio.sleep(0.005)


async def test_output_buffer_keeps_the_newest_snapshot_and_survives_a_failed_flush():
    import asyncio

    from agents.wallet import OutputBuffer

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
