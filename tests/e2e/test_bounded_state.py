"""The memory bound at a small scale: a busy player's record stays small however long
their history, while every answer stays available (from PostgreSQL) for replays.
bench/state.py measures the same at a million operations."""
from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from app.api.bus import bootstrap_servers
from app.messages import wallet_key
from app.topics import GAME_ROUNDS, topic_name
from tables.wallets import decode_state
from tests.e2e.helpers import signed_at, uid
from tests.e2e.test_restart import _now

pytestmark = pytest.mark.integration

ROUNDS = 400
RECORD_LIMIT_BYTES = 4096


async def test_a_busy_players_record_stays_small_and_every_answer_replays(stack, client):
    player = uid("busy")
    assert (await client.call("POST", "/v1/players", {"player_id": player, "currency": "EUR", "country": "DE"}))[0] == 201
    funding = {"adjustment_id": uid("fund"), "player_id": player, "wallet": "CASH", "currency": "EUR",
               "amount": 10_000_000, "reason": "test funding"}
    assert (await client.call("POST", "/v1/adjustments", funding))[0] == 201
    settled = []
    for n in range(20):  # bets placed and settled leave closed holds behind
        bet = {"bet_id": f"{player}-b{n}", "player_id": player, "amount": 10, "currency": "EUR",
               "source_policy": "casino"}
        assert (await client.call("POST", "/v1/bets/place", bet))[0] == 201
        settled.append(await client.call("POST", "/v1/bets/settle", {"bet_id": bet["bet_id"], "result": "LOSS",
                                                                      "payout": 0}))
        assert settled[-1][0] == 200
    settings = stack.settings
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url), linger_ms=5)
    await producer.start()
    try:
        for n in range(ROUNDS):
            body = {"round_id": f"{player}-r{n}", "tenant_id": stack.tenant_id, "player_id": player,
                    "provider": "busy", "bet": {"amount": 100, "currency": "EUR"},
                    "win": {"amount": 50 * (n % 3), "currency": "EUR"}}
            await producer.send(topic_name(settings, GAME_ROUNDS), json.dumps(body).encode(),
                                key=wallet_key(stack.tenant_id, player))
        await producer.flush()
    finally:
        await producer.stop()

    db = await asyncpg.connect(stack.env["DATABASE_URL"])
    try:
        key = wallet_key(stack.tenant_id, player)
        for _ in range(300):
            answers = await db.fetchval("SELECT count(*) FROM operation_answers WHERE agent = 'wallet' AND key = $1 "
                                        "AND operation_key LIKE 'round:busy:%'", key)
            if answers == ROUNDS:
                break
            await asyncio.sleep(0.1)
        assert answers == ROUNDS
        record = bytes(await db.fetchval("SELECT record FROM agent_records WHERE agent = 'wallet' AND key = $1", key))
    finally:
        await db.close()
    state = decode_state(record)
    assert len(record) <= RECORD_LIMIT_BYTES, len(record)
    assert len(state.operations) <= settings.idempotency_window_ops
    assert sum(1 for h in state.holds.values() if not h.open) <= settings.closed_items_kept
    # The first bet's settlement left the record long ago; asked again, it answers as first.
    first = {"bet_id": f"{player}-b0", "result": "LOSS", "payout": 0}
    assert await signed_at(client, "POST", "/v1/bets/settle", first, _now() - 60) == settled[0]
    # A new bet under a used id is refused, though the record no longer holds the old bet.
    again = {"bet_id": f"{player}-b0", "player_id": player, "amount": 10, "currency": "EUR",
             "source_policy": "casino", "idempotency_key": uid("other")}
    status, body = await client.call("POST", "/v1/bets/place", again)
    assert (status, body["error"]["code"]) == (409, "bet_exists")
