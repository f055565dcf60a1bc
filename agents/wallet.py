"""The wallet agent, keyed by tenant|player: load the record, decide, store, emit.

Everything that leaves the agent (postings, cache snapshot, reply) is emitted after the
record is written, and emitted again when a replayed command finds its operation id
already recorded: the first run's outputs may never have left the process."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, MutableMapping

from app.domain.wallet.codec import decode_state, encode_state
from app.domain.wallet.core import Context, WalletResult, WalletState, decide, evolve, wallet_view
from app.messages import READ_WALLET, CommandEnvelope, encode_postings, encode_reply
from app.metrics import AGENT_SECONDS, POISON_MESSAGES
from storage.ports import WalletCache

log = logging.getLogger("bankroll.wallet")


@dataclass
class WalletAgentDeps:
    table: MutableMapping[bytes, bytes]
    send_postings: Callable[[bytes, bytes], Awaitable[None]]
    publish_reply: Callable[[str, bytes], Awaitable[None]]
    cache: WalletCache
    cache_ttl_s: int
    retention_ms: int


def load_state(table: MutableMapping[bytes, bytes], key: bytes, tenant_id: str) -> WalletState:
    raw = table.get(key)
    if raw is not None:
        return decode_state(raw)
    player_id = key.decode().split("|", 1)[1]
    return WalletState.empty(tenant_id, player_id)


async def handle_wallet_message(deps: WalletAgentDeps, key: bytes, value: bytes) -> None:
    started = time.perf_counter()
    try:
        envelope = CommandEnvelope.decode(value)
    except Exception as exc:
        # A message no Bankroll process could have written. Stopping here would stall every
        # player on the partition behind it, so it is counted, logged and passed over.
        POISON_MESSAGES.inc()
        log.error("skipping undecodable wallet command (key %r): %r", key, exc)
        return
    state = load_state(deps.table, key, envelope.tenant_id)

    if envelope.kind == READ_WALLET:
        if state.registered:
            code, body = str(WalletResult.OK), wallet_view(state)
        else:
            code, body = str(WalletResult.PLAYER_NOT_FOUND), {
                "error": {"code": "player_not_found", "message": "no such player"}
            }
    else:
        ctx = Context(
            tenant_id=envelope.tenant_id,
            operation_key=envelope.operation_key,
            request_hash=envelope.request_hash,
            now_ms=envelope.now_ms,
            retention_ms=deps.retention_ms,
        )
        decision = decide(state, envelope.command(), ctx)
        if decision.events:
            state = evolve(state, decision.events)
            deps.table[key] = encode_state(state)
        if decision.postings:
            await deps.send_postings(key, encode_postings(decision.postings))
        code, body = str(decision.outcome.code), decision.outcome.body

    if state.registered:
        snapshot = wallet_view(state)
        await deps.cache.put(state.tenant_id, state.player_id, state.version, json.dumps(snapshot), deps.cache_ttl_s)
    if envelope.reply_to:
        await deps.publish_reply(envelope.reply_to, encode_reply(envelope.request_id, code, body))
    AGENT_SECONDS.labels(envelope.kind).observe(time.perf_counter() - started)
