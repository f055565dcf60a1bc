"""The wallet agent through Faust's test_context(): real agent wiring and table, with
in-memory adapters in place of Redis and PostgreSQL."""
from __future__ import annotations

import json

from agents.worker import WorkerResources, build_worker
from app.domain.wallet.codec import decode_state
from app.messages import CommandEnvelope, decode_ledger_batch, decode_reply, request_hash, wallet_key
from config import Settings
from storage.memory.stores import MemoryLedgerStore, MemoryWalletCache


class MemoryResources(WorkerResources):
    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.cache = MemoryWalletCache()
        self.replies: list[tuple[str, bytes]] = []
        self.store = MemoryLedgerStore()
        self.postings: list[tuple[bytes, bytes]] = []

    def postings_sender(self, streams):
        async def send(key: bytes, value: bytes) -> None:
            self.postings.append((key, value))

        return send

    async def wallet_cache(self):
        return self.cache

    async def publish(self, channel: str, payload: bytes) -> None:
        self.replies.append((channel, payload))

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
    from agents.wallet import ExpiryScheduler, WalletAgentDeps, handle_wallet_message
    from app.domain.wallet.core import Rules
    from app.metrics import POISON_MESSAGES

    replies: list = []

    async def publish(channel: str, payload: bytes) -> None:
        replies.append(payload)

    async def send(key: bytes, value: bytes) -> None:
        raise AssertionError("nothing may be emitted for a poison message")

    deps = WalletAgentDeps(table={}, send_ledger=send, publish_reply=publish, send_topic_reply=send,
                           cache=MemoryWalletCache(), cache_ttl_s=30, retention_ms=1, rules=Rules(),
                           scheduler=ExpiryScheduler())
    before = POISON_MESSAGES._value.get()
    await handle_wallet_message(deps, b"dev|p1", b"\xc1 not msgpack")
    assert POISON_MESSAGES._value.get() == before + 1
    assert deps.table == {} and replies == []
