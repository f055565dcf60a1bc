"""SPEC §2 end to end through HTTP (and the game.rounds stream) against the real services."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.api.bus import bootstrap_servers
from app.messages import wallet_key
from app.topics import GAME_ROUND_RESULTS, GAME_ROUNDS, topic_name
from tests.e2e.helpers import Ledger, cash, create_player, deposit, signed_at, uid, webhook_body

pytestmark = pytest.mark.integration


async def funded(client, amount: int = 10_000) -> str:
    player = uid("p")
    await create_player(client, player)
    deposit_id = await deposit(client, player, amount)
    status, _ = await client.psp_webhook("sandbox", "sandbox-secret", webhook_body(deposit_id, amount))
    assert status == 200
    return player


async def wallets(client, player: str) -> dict:
    status, body = await client.call("GET", f"/v1/wallets?player_id={player}")
    assert status == 200, body
    return {(w["type"], w["currency"]): w for w in body["wallets"]}


async def test_bet_place_settle_and_cancel(stack, client):
    player = await funded(client, 1_000)
    bet = uid("bet")
    status, body = await client.call("POST", "/v1/bets/place", {
        "bet_id": bet, "player_id": player, "amount": 300, "currency": "EUR", "source_policy": "casino",
        "idempotency_key": f"k-{bet}"})
    assert status == 201 and body["status"] == "HELD" and body["hold_id"] == f"bet:{bet}"
    assert body["expires_in"] == 8
    view = await wallets(client, player)
    assert (view[("CASH", "EUR")]["available"], view[("CASH", "EUR")]["held"]) == (700, 300)

    status, body = await client.call("POST", "/v1/bets/settle", {"bet_id": bet, "result": "WIN", "payout": 900})
    assert (status, body["status"], body["cash_delta"]) == (200, "SETTLED", 900)
    # A retry is signed afresh (an identical signature would be refused as a replay).
    again = await signed_at(client, "POST", "/v1/bets/settle", {"bet_id": bet, "result": "WIN", "payout": 900},
                            int(time.time()) - 60)
    assert again == (status, body)  # a retried settle returns the first result
    other = await client.call("POST", "/v1/bets/settle", {"bet_id": bet, "result": "WIN", "payout": 901})
    assert other[0] == 409 and other[1]["error"]["code"] == "idempotency_conflict"
    assert await cash(client, player) == 1_600

    bet2 = uid("bet")
    assert (await client.call("POST", "/v1/bets/place", {"bet_id": bet2, "player_id": player, "amount": 100,
                                                         "currency": "EUR"}))[0] == 201
    status, body = await client.call("POST", "/v1/bets/cancel", {"bet_id": bet2})
    assert (status, body["released"]) == (200, 100)
    assert await cash(client, player) == 1_600

    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        await ledger.wait_for_rows(f"bet:{bet}:settle", 2)
        await ledger.wait_for_rows(f"bet:{bet2}:cancel", 1)
        assert (await ledger.balances())[f"player:{player}:CASH:EUR"] == 1_600


async def test_bet_rejections(stack, client):
    player = await funded(client, 100)
    cases = [
        ({"bet_id": uid("b"), "player_id": player, "amount": 101, "currency": "EUR"}, 422, "insufficient_funds"),
        ({"bet_id": uid("b"), "player_id": player, "amount": 1, "currency": "EUR", "source_policy": "x"}, 422,
         "policy_not_found"),
        ({"bet_id": uid("b"), "player_id": "ghost", "amount": 1, "currency": "EUR"}, 404, "player_not_found"),
        ({"bet_id": uid("b"), "player_id": player, "amount": 1.5, "currency": "EUR"}, 400, "invalid_request"),
    ]
    for body, status, code in cases:
        got = await client.call("POST", "/v1/bets/place", body)
        assert (got[0], got[1]["error"]["code"]) == (status, code), body
    assert (await client.call("POST", "/v1/bets/settle", {"bet_id": "nope", "result": "LOSS"}))[0] == 404
    assert await cash(client, player) == 100


async def test_partial_captures_and_release(stack, client):
    player = await funded(client, 1_000)
    bet = uid("bet")
    await client.call("POST", "/v1/bets/place", {"bet_id": bet, "player_id": player, "amount": 500, "currency": "EUR"})
    hold = f"bet:{bet}"
    s1 = await client.call("POST", f"/v1/holds/{hold}/capture", {"amount": 200, "idempotency_key": "c1"})
    s2 = await client.call("POST", f"/v1/holds/{hold}/capture", {"amount": 100, "idempotency_key": "c2"})
    assert (s1[1]["remaining"], s2[1]["remaining"]) == (300, 200)
    too_much = await client.call("POST", f"/v1/holds/{hold}/capture", {"amount": 201, "idempotency_key": "c3"})
    assert too_much[0] == 422 and too_much[1]["error"]["code"] == "capture_exceeds_hold"
    released = await client.call("POST", f"/v1/holds/{hold}/release", {})
    assert released[1]["released"] == 200
    assert await cash(client, player) == 700


async def test_an_unsettled_bet_expires_by_itself(stack, client):
    player = await funded(client, 1_000)
    bet = uid("bet")
    await client.call("POST", "/v1/bets/place", {"bet_id": bet, "player_id": player, "amount": 400, "currency": "EUR"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        view = await wallets(client, player)
        if view[("CASH", "EUR")]["available"] == 1_000:
            break
        await asyncio.sleep(0.3)
    assert (view[("CASH", "EUR")]["available"], view[("CASH", "EUR")]["held"]) == (1_000, 0)
    late = await client.call("POST", "/v1/bets/settle", {"bet_id": bet, "result": "WIN", "payout": 5})
    assert late[0] == 409 and late[1]["error"]["code"] == "hold_not_open"


async def test_withdrawal_needs_kyc_then_holds_and_pays_out(stack, client):
    player = await funded(client, 5_000)
    wd = uid("wd")
    request = {"withdrawal_id": wd, "player_id": player, "amount": 2_000, "currency": "EUR", "method": "bank"}
    refused = await client.call("POST", "/v1/withdrawals", request)
    assert refused[0] == 403 and refused[1]["error"]["code"] == "kyc_required"
    assert (await client.call("PUT", f"/v1/players/{player}/kyc", {"kyc_status": "VERIFIED"}))[0] == 200
    blocked = await client.call("POST", "/v1/withdrawals", {**request, "withdrawal_id": uid("wd"),
                                                            "destination": "IBAN-BLOCKED"})
    assert blocked[1]["error"]["code"] == "destination_blocked"
    status, body = await signed_at(client, "POST", "/v1/withdrawals", request, int(time.time()) - 60)
    assert (status, body) == (202, {"withdrawal_id": wd, "state": "PENDING", "status_url": f"/v1/withdrawals/{wd}"})
    assert (await client.call("GET", f"/v1/withdrawals/{wd}"))[1]["state"] == "PENDING"
    assert await cash(client, player) == 3_000
    hook = {"event_id": uid("e"), "withdrawal_id": wd, "status": "SUCCEEDED", "amount": 2_000, "currency": "EUR",
            "fee": 25}
    assert (await client.psp_webhook("sandbox", "sandbox-secret", hook))[0] == 200
    assert (await client.call("GET", f"/v1/withdrawals/{wd}"))[1]["state"] == "SUCCEEDED"
    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        await ledger.wait_for_rows(f"withdrawal:{wd}:succeeded", 2)
        legs = await ledger.entries(f"withdrawal:{wd}:succeeded")
        assert [(p.credit_account, p.amount_minor) for p in legs] == [
            ("system:PAYOUTS:sandbox:EUR", 1_975), ("system:PSP_FEES:sandbox:EUR", 25)]
        await ledger.balances()

    status, body = await client.call("GET", f"/v1/players/{player}/audit")
    assert status == 200
    assert {"kyc_required", "destination_blocked", "player_status_set"} <= {a["code"] for a in body["audit"]}


async def test_limits_refuse_and_audit(stack, client):
    player = await funded(client, 5_000)
    status, body = await client.call("PUT", f"/v1/players/{player}/limits", {"bet": {"day": 500}})
    assert (status, body["limits"]["bet:day"]) == (200, 500)
    raised = await client.call("PUT", f"/v1/players/{player}/limits", {"bet": {"day": 900}})
    assert raised[1]["limits"]["bet:day"] == 500 and raised[1]["pending"]["bet:day"]["value"] == 900
    assert (await client.call("GET", f"/v1/players/{player}/limits"))[1]["limits"]["bet:day"] == 500
    ok = await client.call("POST", "/v1/bets/place", {"bet_id": uid("b"), "player_id": player, "amount": 500,
                                                      "currency": "EUR"})
    assert ok[0] == 201
    refused = await client.call("POST", "/v1/bets/place", {"bet_id": uid("b"), "player_id": player, "amount": 1,
                                                           "currency": "EUR"})
    assert refused[0] == 403 and refused[1]["error"]["code"] == "bet_limit_exceeded"
    until = int(time.time()) + 3600
    assert (await client.call("PUT", f"/v1/players/{player}/limits", {"self_exclusion_until": until}))[0] == 200
    dep = await client.call("POST", "/v1/deposits", {"deposit_id": uid("d"), "player_id": player, "amount": 10,
                                                     "currency": "EUR", "method": "card"})
    assert dep[0] == 403 and dep[1]["error"]["code"] == "self_excluded"
    bad = await client.call("PUT", f"/v1/players/{player}/limits", {"bet": {"year": 5}})
    assert bad[0] == 400

    async def audited():
        _, body = await client.call("GET", f"/v1/players/{player}/audit")
        return [a["code"] for a in body["audit"] if a["kind"] == "refusal"]

    deadline = time.monotonic() + 10
    while set(await audited()) != {"bet_limit_exceeded", "self_excluded"} and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert set(await audited()) == {"bet_limit_exceeded", "self_excluded"}


async def test_bonus_fx_adjustment_and_history(stack, client):
    player = await funded(client, 10_000)
    expires = int(time.time()) + 86_400
    bonus = await client.call("POST", "/v1/bonuses", {"bonus_id": uid("bo"), "player_id": player, "amount": 500,
                                                      "currency": "EUR", "wager_required": 1_500,
                                                      "expires_at": expires})
    assert bonus[0] == 201
    view = await wallets(client, player)
    assert (view[("BONUS", "EUR")]["available"], view[("BONUS", "EUR")]["wager_required"]) == (500, 1_500)

    missing = await client.call("POST", "/v1/fx/conversions", {"conversion_id": uid("fx"), "player_id": player,
                                                               "from_currency": "EUR", "to_currency": "GBP",
                                                               "amount": 100})
    assert missing[0] == 422 and missing[1]["error"]["code"] == "fx_rate_not_found"
    assert (await client.call("POST", "/v1/fx/rates", {"base": "EUR", "quote": "USD", "rate": 1.08}))[0] == 400
    assert (await client.call("POST", "/v1/fx/rates", {"base": "EUR", "quote": "USD", "rate": "1.33333",
                                                       "valid_from": int(time.time()) - 5}))[0] == 201
    status, body = await client.call("POST", "/v1/fx/conversions", {
        "conversion_id": uid("fx"), "player_id": player, "from_currency": "EUR", "to_currency": "USD",
        "amount": 333})
    assert (status, body["credited"], body["residue_minor"]) == (200, 444, "-0.00111")
    view = await wallets(client, player)
    assert (view[("CASH", "EUR")]["available"], view[("CASH", "USD")]["available"]) == (9_667, 444)

    adjustment_id = uid("adj")
    adj = await client.call("POST", "/v1/adjustments", {"adjustment_id": adjustment_id, "player_id": player,
                                                        "wallet": "CASH", "currency": "EUR", "amount": -67,
                                                        "reason": "test correction"})
    assert adj[0] == 201
    assert await cash(client, player) == 9_600

    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        await ledger.wait_for_rows(f"adjustment:{adjustment_id}", 1)
    seen, cursor = [], None
    for _ in range(10):
        path = f"/v1/players/{player}/postings?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, page = await client.call("GET", path)
        assert status == 200
        seen += [(p["operation_id"], p["leg"]) for p in page["postings"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) >= 5
    assert seen[0][0].startswith("adjustment:")
    assert (await client.call("GET", f"/v1/players/{player}/postings?cursor=garbage"))[0] == 400


async def test_game_rounds_stream_applies_once_and_answers_on_the_results_topic(stack, client):
    player = await funded(client, 1_000)
    settings = stack.settings
    servers = bootstrap_servers(settings.kafka_url)
    producer = AIOKafkaProducer(bootstrap_servers=servers)
    consumer = AIOKafkaConsumer(topic_name(settings, GAME_ROUND_RESULTS), bootstrap_servers=servers,
                                group_id=f"test-{uuid.uuid4().hex}", auto_offset_reset="earliest")
    await producer.start()
    await consumer.start()
    try:
        round_id = uid("r")
        message = {"round_id": round_id, "tenant_id": stack.tenant_id, "player_id": player, "provider": "acme",
                   "bet": {"amount": 100, "currency": "EUR"}, "win": {"amount": 350, "currency": "EUR"}}
        for _ in range(3):  # delivered three times: applied once
            await producer.send_and_wait(topic_name(settings, GAME_ROUNDS), json.dumps(message).encode(),
                                         key=player.encode())
        await producer.send_and_wait(topic_name(settings, GAME_ROUNDS), b"{not json", key=b"x")
        results = []
        deadline = time.monotonic() + 30
        while len([r for r in results if r["request_id"] == round_id]) < 3 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            results += [json.loads(m.value) for msgs in batch.values() for m in msgs]
        mine = [r for r in results if r["request_id"] == round_id]
        assert len(mine) == 3 and all(r["body"] == mine[0]["body"] for r in mine)
        assert mine[0]["code"] == "ok" and mine[0]["body"]["cash_delta"] == 250
        assert any(r["code"] == "invalid_request" for r in results)

        # Keyed as the command topic is (tenant|player), a round is applied by the owning
        # actor directly, without the hop through the command topic.
        direct = {**message, "round_id": uid("r"), "win": {"amount": 0, "currency": "EUR"}}
        await producer.send_and_wait(topic_name(settings, GAME_ROUNDS), json.dumps(direct).encode(),
                                     key=wallet_key(stack.tenant_id, player))
        deadline = time.monotonic() + 30
        while not any(r["request_id"] == direct["round_id"] for r in results) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            results += [json.loads(m.value) for msgs in batch.values() for m in msgs]
        answer = next(r for r in results if r["request_id"] == direct["round_id"])
        assert (answer["code"], answer["body"]["cash_delta"]) == ("ok", -100)
    finally:
        await producer.stop()
        await consumer.stop()
    assert await cash(client, player) == 1_150


BAD = [
    ("POST", "/v1/withdrawals", {"withdrawal_id": "w", "player_id": "P", "amount": 0, "currency": "EUR",
                                 "method": "bank"}, 400),
    ("POST", "/v1/withdrawals", {"withdrawal_id": "w", "player_id": "P", "amount": 10, "currency": "EUR"}, 400),
    ("POST", "/v1/withdrawals", {"withdrawal_id": "w", "player_id": "P", "amount": 10, "currency": "EUR",
                                 "method": "bank", "extra": 1}, 400),
    ("POST", "/v1/bets/place", {"bet_id": "b", "player_id": "P", "amount": -1, "currency": "EUR"}, 400),
    ("POST", "/v1/bets/place", {"bet_id": "b", "player_id": "P", "amount": 5, "currency": "eur"}, 400),
    ("POST", "/v1/bets/settle", {"bet_id": "b", "result": "DRAW"}, 400),
    ("POST", "/v1/bets/settle", {"bet_id": "b", "result": "WIN", "payout": "5"}, 400),
    ("POST", "/v1/bets/cancel", {}, 400),
    ("POST", "/v1/holds/bet:none/capture", {"amount": 5}, 400),
    ("POST", "/v1/holds/bet:none/capture", {"amount": 5, "idempotency_key": "k"}, 404),
    ("POST", "/v1/holds/bet:none/release", {"x": 1}, 400),
    ("POST", "/v1/bonuses", {"bonus_id": "bo", "player_id": "P", "amount": 5, "currency": "EUR",
                             "wager_required": 5}, 400),
    ("POST", "/v1/bonuses", {"bonus_id": "bo", "player_id": "P", "amount": 5, "currency": "USD",
                             "wager_required": 5, "expires_at": 4_000_000_000}, 422),
    ("POST", "/v1/fx/conversions", {"conversion_id": "f", "player_id": "P", "from_currency": "EUR",
                                    "to_currency": "XXX", "amount": 5}, 422),
    ("POST", "/v1/fx/conversions", {"conversion_id": "f", "player_id": "P", "from_currency": "EUR",
                                    "to_currency": "USD", "amount": 5.5}, 400),
    ("POST", "/v1/fx/rates", {"base": "EUR", "quote": "USD", "rate": "-1"}, 400),
    ("POST", "/v1/adjustments", {"adjustment_id": "a", "player_id": "P", "wallet": "CASH", "currency": "EUR",
                                 "amount": 0, "reason": "x"}, 400),
    ("POST", "/v1/adjustments", {"adjustment_id": "a", "player_id": "P", "wallet": "HOLD", "currency": "EUR",
                                 "amount": 5, "reason": "x"}, 400),
    ("POST", "/v1/adjustments", {"adjustment_id": "a", "player_id": "P", "wallet": "CASH", "currency": "EUR",
                                 "amount": -999_999, "reason": "x"}, 422),
    ("PUT", "/v1/players/P/limits", {"deposit": {"day": -5}}, 400),
    ("PUT", "/v1/players/P/limits", {"session_minutes": 0}, 400),
    ("PUT", "/v1/players/P/limits", {"cool_off_until": "tomorrow"}, 400),
    ("PUT", "/v1/players/P/kyc", {"kyc_status": "MAYBE"}, 400),
    ("PUT", "/v1/players/P/kyc", {"kyc_status": "VERIFIED", "aml_hold": "no"}, 400),
    ("GET", "/v1/players/P/postings?limit=0", None, 400),
    ("GET", "/v1/wallets?player_id=P&types=CASH,GOLD", None, 400),
    ("GET", "/v1/withdrawals/none", None, 404),
]


@pytest.mark.parametrize("method,path,body,status", BAD, ids=[f"{m} {p} {s}" for m, p, _, s in BAD])
async def test_every_bad_input_gets_a_4xx_and_writes_nothing(stack, client, method, path, body, status):
    player = await funded(client, 1_000)
    _, before = await client.call("GET", f"/v1/wallets?player_id={player}")

    def fill(value):
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if value == "P":
            return player
        if isinstance(value, str) and len(value) <= 2 and value not in ("EUR",):
            return f"{value}-{uuid.uuid4().hex[:8]}"
        return value

    got_status, reply = await client.call(method, path.replace("/P/", f"/{player}/").replace("=P", f"={player}"),
                                          fill(body) if body is not None else None)
    assert got_status == status, reply
    assert set(reply) == {"error"} and reply["error"]["code"] and reply["error"]["message"]
    _, after = await client.call("GET", f"/v1/wallets?player_id={player}")
    assert after == before  # same balances, same version: nothing was written
