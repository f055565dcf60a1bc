"""End to end through HTTP against the real (or embedded) broker, PostgreSQL and Redis."""
from __future__ import annotations

import json
import time

import pytest

from app.client.signed import BankrollClient
from tests.e2e.helpers import Ledger, cash, create_player, deposit, signed_at, uid, webhook_body

pytestmark = pytest.mark.integration


async def test_deposit_is_credited_cached_and_flushed_to_a_balanced_ledger(stack, client):
    player = uid("p")
    await create_player(client, player)
    deposit_id = await deposit(client, player, 12_050)
    assert await cash(client, player) == 0

    status, body = await client.psp_webhook("sandbox", "sandbox-secret", webhook_body(deposit_id, 12_050, fee=50))
    assert (status, body) == (200, {"credited": 12_000, "deposit_id": deposit_id, "state": "SUCCEEDED"})

    status, body = await client.call("GET", f"/v1/wallets?player_id={player}&types=CASH,BONUS")
    assert status == 200
    assert [(w["type"], w["currency"], w["available"], w["held"]) for w in body["wallets"]] == [
        ("CASH", "EUR", 12_000, 0), ("BONUS", "EUR", 0, 0)]
    assert body["wallets"][0]["version"] >= 3

    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        await ledger.wait_for_rows(f"deposit:{deposit_id}", 2)
        legs = await ledger.entries(f"deposit:{deposit_id}")
        assert [(p.debit_account, p.credit_account, p.amount_minor) for p in legs] == [
            ("system:PSP_SETTLEMENT:sandbox:EUR", f"player:{player}:CASH:EUR", 12_050),
            (f"player:{player}:CASH:EUR", "system:PSP_FEES:sandbox:EUR", 50)]
        assert (await ledger.balances())[f"player:{player}:CASH:EUR"] == 12_000


async def test_failed_deposit_moves_no_money(stack, client):
    player = uid("p")
    await create_player(client, player)
    deposit_id = await deposit(client, player, 500)
    status, body = await client.psp_webhook("sandbox", "sandbox-secret",
                                            webhook_body(deposit_id, 500, status="FAILED"))
    assert (status, body["state"]) == (200, "FAILED")
    assert await cash(client, player) == 0


async def test_retries_return_the_first_result_byte_for_byte(stack, client):
    player = uid("p")
    await create_player(client, player)
    request = {"deposit_id": uid("dep"), "player_id": player, "amount": 700, "currency": "EUR",
               "method": "card", "idempotency_key": uid("key")}
    now = int(time.time())
    first = await signed_at(client, "POST", "/v1/deposits", request, now)
    again = await signed_at(client, "POST", "/v1/deposits", request, now - 1)
    assert first == again and first[0] == 202
    changed = await signed_at(client, "POST", "/v1/deposits", {**request, "amount": 701}, now - 2)
    assert changed[0] == 409 and changed[1]["error"]["code"] == "idempotency_conflict"

    hook = webhook_body(request["deposit_id"], 700, fee=7)
    first_hook = await client.psp_webhook("sandbox", "sandbox-secret", hook)
    assert first_hook == await client.psp_webhook("sandbox", "sandbox-secret", hook)
    conflicting = await client.psp_webhook("sandbox", "sandbox-secret", {**hook, "fee": 8})
    assert conflicting[0] == 409
    assert await cash(client, player) == 693

    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        await ledger.wait_for_rows(f"deposit:{request['deposit_id']}", 2)
        assert await ledger.count(f"deposit:{request['deposit_id']}") == 2


async def test_bad_stale_or_replayed_signatures_are_refused_and_write_nothing(stack, client):
    player = uid("p")
    body = json.dumps({"player_id": player, "currency": "EUR", "country": "DE"}).encode()
    path = "/v1/players"
    now = int(time.time())
    good = client.headers("POST", path, body, now)
    cases = {
        "missing_signature": {k: v for k, v in good.items() if k != "X-Signature"},
        "unknown_api_key": {**good, "X-Api-Key": "nobody"},
        "invalid_signature": {**good, "X-Signature": "0" * 64},
        # Well past the 300 s bound: the server's clock may tick between here and there.
        "stale_timestamp": client.headers("POST", path, body, now - 310),
        "future_timestamp": client.headers("POST", path, body, now + 310),
    }
    for name, headers in cases.items():
        status, reply = await client.call("POST", path, body, headers=headers)
        assert status == 401, name
        assert reply["error"]["code"] in {"missing_signature", "unknown_api_key", "invalid_signature",
                                          "stale_timestamp"}, name
    wrong_body = await client.call("POST", path, body.replace(b"EUR", b"USD"), headers=good)
    assert wrong_body[0] == 401 and wrong_body[1]["error"]["code"] == "invalid_signature"
    psp_forged = await client.psp_webhook("sandbox", "not-the-secret", webhook_body("d1", 100))
    assert psp_forged[0] == 401

    status, _ = await client.call("GET", f"/v1/wallets?player_id={player}")
    assert status == 404, "a refused request created the player"

    assert (await client.call("POST", path, body, headers=good))[0] == 201
    replay = await client.call("POST", path, body, headers=good)
    assert replay[0] == 401 and replay[1]["error"]["code"] == "replayed_signature"

    # A read cannot write, so the same signed GET twice (a widget polling) is answered twice.
    read_path = f"/v1/wallets?player_id={player}"
    read_headers = client.headers("GET", read_path, b"")
    first = await client.call("GET", read_path, b"", headers=read_headers)
    assert first[0] == 200 and await client.call("GET", read_path, b"", headers=read_headers) == first


BAD_REQUESTS = [
    ("/v1/players", b"not json", 400),
    ("/v1/players", b"[1, 2]", 400),
    ("/v1/players", {"player_id": "", "currency": "EUR", "country": "DE"}, 400),
    ("/v1/players", {"player_id": "a|b", "currency": "EUR", "country": "DE"}, 400),
    ("/v1/players", {"player_id": "ok", "currency": "euro", "country": "DE"}, 400),
    ("/v1/players", {"player_id": "ok", "currency": "EUR", "country": "Germany"}, 400),
    ("/v1/players", {"player_id": "ok", "currency": "EUR", "country": "DE", "vip": True}, 400),
    ("/v1/deposits", {"deposit_id": "d", "player_id": "P", "amount": 10.5, "currency": "EUR", "method": "card"}, 400),
    ("/v1/deposits", {"deposit_id": "d", "player_id": "P", "amount": "10", "currency": "EUR", "method": "card"}, 400),
    ("/v1/deposits", {"deposit_id": "d", "player_id": "P", "amount": 0, "currency": "EUR", "method": "card"}, 400),
    ("/v1/deposits", {"deposit_id": "d", "player_id": "P", "amount": -5, "currency": "EUR", "method": "card"}, 400),
    ("/v1/deposits", {"deposit_id": "d", "player_id": "P", "amount": True, "currency": "EUR", "method": "card"}, 400),
    ("/v1/deposits", {"deposit_id": "d", "player_id": "P", "amount": 10**16, "currency": "EUR", "method": "card"}, 400),
    ("/v1/deposits", {"deposit_id": "d", "player_id": "P", "amount": 100, "currency": "EUR"}, 400),
    ("/v1/deposits", {"deposit_id": "d", "player_id": "P", "amount": 100, "currency": "USD", "method": "card"}, 422),
    ("/v1/deposits", {"deposit_id": "d", "player_id": "nobody", "amount": 100, "currency": "EUR",
                      "method": "card"}, 404),
]


@pytest.mark.parametrize("path,body,status", BAD_REQUESTS)
async def test_bad_input_gets_a_4xx_and_changes_nothing(stack, client, path, body, status):
    player = uid("P")
    await create_player(client, player)
    if isinstance(body, dict):
        body = {k: (player if v == "P" else uid("d") if k == "deposit_id" else v) for k, v in body.items()}
        body.setdefault("idempotency_key", uid("k")) if path == "/v1/deposits" else None
    got_status, reply = await client.call("POST", path, body)
    assert got_status == status, reply
    assert set(reply) == {"error"} and reply["error"]["code"] and reply["error"]["message"]
    status_after, wallets = await client.call("GET", f"/v1/wallets?player_id={player}")
    assert status_after == 200
    assert all(w["available"] == 0 for w in wallets["wallets"])
    assert wallets["version"] == 1
    if path == "/v1/deposits":
        async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
            routes = await ledger.pool.fetchval("SELECT count(*) FROM deposit_routes WHERE deposit_id = $1",
                                                body["deposit_id"])
        assert routes == 0


async def test_bad_webhooks_are_refused(stack, client):
    player = uid("p")
    await create_player(client, player)
    deposit_id = await deposit(client, player, 1_000)
    cases = [
        (webhook_body("no-such-deposit", 1_000), 404, "deposit_not_found"),
        (webhook_body(deposit_id, 999), 422, "amount_mismatch"),
        (webhook_body(deposit_id, 1_000, fee=1_001), 422, "fee_exceeds_amount"),
        ({**webhook_body(deposit_id, 1_000), "status": "MAYBE"}, 400, "invalid_request"),
        ({**webhook_body(deposit_id, 1_000), "amount": 10.0}, 400, "invalid_request"),
    ]
    for i, (body, status, code) in enumerate(cases):
        body = {**body, "event_id": f"{body['event_id']}-{i}"}
        got = await client.psp_webhook("sandbox", "sandbox-secret", body)
        assert got[0] == status and got[1]["error"]["code"] == code, (body, got)
    assert (await client.psp_webhook("nopsp", "x", webhook_body(deposit_id, 1_000)))[0] == 404
    assert await cash(client, player) == 0


async def test_an_api_key_reaches_only_its_own_tenant(stack, client):
    player = uid("p")
    await create_player(client, player)
    async with BankrollClient(stack.base_url, api_key="other", secret="other-secret") as other:
        status, body = await other.call("GET", f"/v1/wallets?player_id={player}")
        assert status == 404 and body["error"]["code"] == "player_not_found"


async def test_unsigned_endpoints(stack, client):
    async with client._session.get(stack.base_url + "/health") as r:
        assert r.status == 200
    async with client._session.get(stack.base_url + "/ready") as r:
        body = await r.json()
        assert r.status == 200 and body["ready"] and body["checks"]["partitions_assigned"]
    async with client._session.get(stack.base_url + "/metrics") as r:
        text = await r.text()
        assert r.status == 200 and "bankroll_http_request_seconds_bucket" in text
    async with client._session.get(stack.base_url + "/openapi.json") as r:
        doc = await r.json()
        assert "/v1/deposits" in doc["paths"]
    status, body = await client.call("GET", "/v1/nothing-here")
    assert status == 404 and body["error"]["code"] == "not_found"
