"""SPEC §3 end to end: pools, contributions, triggers and the payout saga through HTTP and
the game.rounds stream, against the real broker, PostgreSQL and Redis. Conservation is
checked on the rows in PostgreSQL, to the minor unit."""
from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.api.bus import bootstrap_servers
from app.domain.jackpot.core import PoolConfig, TierConfig, ledger_conservation, payout_account
from app.domain.ledger import Posting
from app.messages import wallet_key
from app.client.signed import BankrollClient
from app.topics import GAME_ROUNDS, JP_CONTRIBUTION_RECORDED, topic_name
from tests.e2e.helpers import Ledger, cash, create_player, signed_at, uid

pytestmark = pytest.mark.integration


async def create_pool(client, **fields) -> dict:
    pool_id = fields.setdefault("pool_id", uid("pool"))
    fields.setdefault("brand_ids", ["b1"])
    fields.setdefault("region", "mt")
    fields.setdefault("currency", "EUR")
    status, body = await client.call("POST", "/v1/jp/pools", fields)
    assert status == 201, body
    assert body["pool_id"] == pool_id
    return body


async def pool(client, pool_id: str) -> dict:
    status, body = await client.call("GET", f"/v1/jp/pools/{pool_id}")
    assert status == 200, body
    return body


async def contribute(client, pool_id: str, bet: int, *, brand: str = "b1", player: str = "p-any",
                     contribution: int | None = None, contribution_id: str = "", **extra) -> tuple[int, dict]:
    body = {"contribution_id": contribution_id or uid("c"), "brand_id": brand, "pool_id": pool_id,
            "round_id": uid("r"), "player_id": player, "bet": {"amount": bet, "currency": "EUR"}, **extra}
    if contribution is not None:
        body["contribution"] = {"amount": contribution, "currency": "EUR"}
    return await client.call("POST", "/v1/jp/contributions", body)


async def until(predicate, timeout_s: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached in {timeout_s} s")
        await asyncio.sleep(0.05)


async def pool_postings(ledger: Ledger, pool_id: str) -> list[Posting]:
    rows = await ledger.pool.fetch(
        "SELECT * FROM ledger_entries WHERE tenant_id = $1 AND (operation_id LIKE $2 OR debit_account LIKE $3 "
        "OR credit_account LIKE $3)", ledger.tenant_id, f"jp:{pool_id}:%", f"%JACKPOT_LIABILITY:{pool_id}%")
    return [Posting(r["tenant_id"], r["operation_id"], r["leg"], r["debit_account"], r["credit_account"],
                    r["amount_minor"], r["currency"].strip(), r["category"], 0, r["reason"], r["player_id"])
            for r in rows]


def config_of(view: dict) -> PoolConfig:
    tiers = tuple(TierConfig(t["tier"], t["seed"], t["cap"], t["share_bps"], t["odds_ppb"],
                             *(t["drop_range"] or (0, 0))) for t in view["tiers"])
    return PoolConfig(view["pool_id"], view["kind"], tuple(view["brand_ids"]), view["region"], view["currency"],
                      view["contribution_bps"], tiers, view["server_seed_hash"])


async def check_conservation_in_postgres(stack, pool_id: str, view: dict) -> None:
    """contributions + seeds == sizes + reserves + payouts, from the ledger rows alone, and
    equal to what the pool record says."""
    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        async def flushed():
            figures, balances = ledger_conservation(await pool_postings(ledger, pool_id), config_of(view))
            sizes = sum(t["size"] + t["reserve"] for t in view["tiers"])
            return (figures, balances) if figures.pools_minor == sizes else None

        figures, balances = await until(flushed, what="pool postings in PostgreSQL")
        assert figures.balanced, figures
        for tier in view["tiers"]:
            liability = [b for a, b in balances.items() if a.endswith(f":{tier['tier']}:EUR")
                         or (len(view["tiers"]) == 1 and a.endswith(f":{pool_id}:EUR"))]
            assert tier["size"] in liability, (tier, balances)


async def test_progressive_pool_contributions_are_idempotent_and_conserve_money(stack, client):
    view = await create_pool(client, kind="progressive", seed_amount=10_000, contribution_bps=150, name="Mega")
    pool_id = view["pool_id"]
    assert view["sizes"] == {"main": 10_000}

    status, first = await contribute(client, pool_id, 1_000, contribution_id="c-same")
    assert status == 200, first
    assert (first["amount"], first["tiers"], first["sizes"]) == (15, {"main": 15}, {"main": 10_015})
    # The same contribution again (a fresh signature) returns the first answer; another
    # body under its id is a conflict. Neither changes the pool.
    same = {"contribution_id": "c-same", "brand_id": "b1", "pool_id": pool_id, "round_id": first["round_id"],
            "player_id": "p-any", "bet": {"amount": 1_000, "currency": "EUR"}}
    assert await signed_at(client, "POST", "/v1/jp/contributions", same, int(time.time()) - 60) == (200, first)
    status, body = await signed_at(client, "POST", "/v1/jp/contributions", {**same, "bet": {
        "amount": 2_000, "currency": "EUR"}}, int(time.time()) - 3)
    assert (status, body["error"]["code"]) == (409, "idempotency_conflict")
    status, explicit = await contribute(client, pool_id, 1_000, contribution=40)
    assert (status, explicit["amount"], explicit["sizes"]) == (200, 40, {"main": 10_055})

    read = await until(lambda: _pool_at(client, pool_id, 10_055), what="snapshot")
    assert read["name"] == "Mega" and read["currency"] == "EUR" and read["tiers"][0]["seed"] == 10_000
    assert "drop_point" not in json.dumps(read)
    listed = (await client.call("GET", "/v1/jp/pools?brand_id=b1&region=mt"))[1]["pools"]
    assert pool_id in [p["pool_id"] for p in listed]
    assert pool_id not in [p["pool_id"] for p in (await client.call("GET", "/v1/jp/pools?brand_id=zz"))[1]["pools"]]

    await check_conservation_in_postgres(stack, pool_id, read)


async def _pool_at(client, pool_id: str, size: int) -> dict | None:
    view = await pool(client, pool_id)
    return view if view["size"] == size else None


async def test_isolation_and_bad_requests_change_nothing(stack, client):
    view = await create_pool(client, kind="progressive", seed_amount=500, contribution_bps=100,
                             brand_ids=["b1", "b2"], region="mt")
    pool_id = view["pool_id"]
    before = await pool(client, pool_id)
    cases = [
        ({"brand": "b9"}, 422, "brand_not_in_pool"),
        ({"region": "uk"}, 422, "region_not_in_pool"),
        ({"bet_currency": "USD"}, 422, "currency_mismatch"),
        ({"contribution": 2_000}, 422, "invalid_contribution"),
    ]
    for change, status_code, code in cases:
        extra = {}
        if "region" in change:
            extra["region"] = change["region"]
        if "bet_currency" in change:
            status, body = await client.call("POST", "/v1/jp/contributions", {
                "contribution_id": uid("c"), "brand_id": "b1", "pool_id": pool_id, "round_id": "r",
                "player_id": "p", "bet": {"amount": 100, "currency": "USD"}})
        else:
            status, body = await contribute(client, pool_id, 1_000, brand=change.get("brand", "b1"),
                                            contribution=change.get("contribution"), **extra)
        assert (status, body["error"]["code"]) == (status_code, code), (change, body)
    for bad in ({"pool_id": pool_id}, {"pool_id": pool_id, "bet": {"amount": 1.5, "currency": "EUR"}},
                {"pool_id": pool_id, "brand_id": "b1", "bet": {"amount": 100, "currency": "EUR"}, "extra": 1}):
        status, body = await client.call("POST", "/v1/jp/contributions", bad)
        assert (status, body["error"]["code"]) == (400, "invalid_request"), bad
    status, body = await contribute(client, uid("nopool"), 100)
    assert (status, body["error"]["code"]) == (404, "pool_not_found")
    status, body = await client.call("POST", "/v1/jp/pools", {"pool_id": uid("p"), "kind": "must_drop",
                                                              "brand_ids": ["b1"], "region": "mt",
                                                              "currency": "EUR", "seed_amount": 100})
    assert (status, body["error"]["code"]) == (422, "invalid_config")
    status, body = await client.call("POST", "/v1/jp/pools", {"pool_id": pool_id, "kind": "fixed",
                                                              "brand_ids": ["b1"], "region": "mt",
                                                              "currency": "EUR", "seed_amount": 100})
    assert (status, body["error"]["code"]) == (409, "pool_exists")
    assert await pool(client, pool_id) == before  # size, version and audit chain head alike

    status, body = await client.call("POST", "/v1/jp/candidates", {"pool_id": pool_id, "brand_id": "b2",
                                                                   "bet": {"amount": 100, "currency": "EUR"}})
    assert status == 200 and body["eligible"] and body["rules"]["brand_ids"] == ["b1", "b2"]
    status, body = await client.call("POST", "/v1/jp/candidates", {"pool_id": pool_id, "brand_id": "b2",
                                                                   "region": "uk",
                                                                   "bet": {"amount": 100, "currency": "EUR"}})
    assert status == 200 and (body["eligible"], body["reason"]) == (False, "region_not_in_pool")


async def test_trigger_credits_the_winner_once_and_reseeds(stack, client):
    player = uid("p")
    await create_player(client, player)
    view = await create_pool(client, kind="progressive", seed_amount=1_000, contribution_bps=1_000)
    pool_id = view["pool_id"]
    assert (await contribute(client, pool_id, 5_000, player=player))[0] == 200
    trigger = {"trigger_id": uid("t"), "pool_id": pool_id, "reason": "symbol",
               "selection": {"player_id": player, "round_id": "r-win"}}
    status, win = await client.call("POST", "/v1/jp/triggers", trigger)
    assert status == 201, win
    assert (win["amount"], win["payout_key"]) == (1_500, f"jp_p_{pool_id}_{trigger['trigger_id']}")
    status, again = await signed_at(client, "POST", "/v1/jp/triggers", trigger, int(time.time()) - 60)
    assert (status, again) == (201, win)
    await until(lambda: _cash_is(client, player, 1_500), what="the credit")
    credited = await until(lambda: _settled(client, pool_id), what="the saga's end")
    assert credited["size"] == 1_000  # reseeded
    assert credited["tiers"][0]["last_winner"]["amount"] == 1_500
    assert credited["tiers"][0]["last_winner"]["player"].endswith("***")
    assert player not in json.dumps(credited)
    await check_conservation_in_postgres(stack, pool_id, credited)
    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        await ledger.wait_for_rows(win["payout_key"], 1)
        [leg] = await ledger.entries(win["payout_key"])
        assert (leg.debit_account, leg.credit_account, leg.amount_minor) == (
            payout_account("EUR"), f"player:{player}:CASH:EUR", 1_500)
        # Every win requested was credited: the payout clearing account is back to zero.
        assert (await ledger.balances()).get(payout_account("EUR"), 0) == 0


async def _cash_is(client, player: str, amount: int) -> bool:
    return await cash(client, player) == amount


async def _settled(client, pool_id: str) -> dict | None:
    view = await pool(client, pool_id)
    return view if view["open_payouts"] == 0 else None


async def test_a_payout_held_by_aml_fails_and_is_paid_once_the_hold_is_lifted(stack, client):
    player = uid("p")
    await create_player(client, player)
    status, _ = await client.call("PUT", f"/v1/players/{player}/kyc", {"kyc_status": "VERIFIED", "aml_hold": True})
    assert status == 200
    view = await create_pool(client, kind="fixed", seed_amount=2_500)
    pool_id, trigger_id = view["pool_id"], uid("t")
    status, win = await client.call("POST", "/v1/jp/triggers", {"trigger_id": trigger_id, "pool_id": pool_id,
                                                                "reason": "promo", "selection": {
                                                                    "player_id": player, "round_id": "r1"}})
    assert status == 201, win
    retry_path = f"/v1/jp/pools/{pool_id}/payouts/{trigger_id}/retry"

    async def failed():
        status, body = await client.call("POST", retry_path, {})
        return None if status == 409 and body["error"]["code"] == "payout_not_failed" else (status, body)

    async def refused():
        status, body = await client.call("GET", f"/v1/players/{player}/audit?limit=10")
        return "aml_hold" in [r["code"] for r in body["audit"]]

    # The wallet refuses while the hold stands (an audited refusal) and the pool records the
    # failure; once the hold is lifted, the operator's retry pays under the same key.
    await until(refused, what="the audited refusal")
    assert await cash(client, player) == 0
    await client.call("PUT", f"/v1/players/{player}/kyc", {"kyc_status": "VERIFIED", "aml_hold": False})
    status, body = await until(failed, what="the failed payout")
    assert status == 200 and body["attempt"] == 2, body
    await until(lambda: _cash_is(client, player, 2_500), what="the retried credit")
    await until(lambda: _settled(client, pool_id), what="the saga's end")


async def test_rounds_on_the_stream_carry_contributions_once_and_fund_them_from_the_provider(stack, client):
    player = uid("p")
    await create_player(client, player)
    await client.call("POST", "/v1/adjustments", {"adjustment_id": uid("a"), "player_id": player, "wallet": "CASH",
                                                 "currency": "EUR", "amount": 10_000, "reason": "test funds"})
    view = await create_pool(client, kind="progressive", seed_amount=100, contribution_bps=200)
    pool_id = view["pool_id"]
    settings = stack.settings
    round_id = uid("round")
    message = {"round_id": round_id, "tenant_id": stack.tenant_id, "player_id": player, "provider": "acme",
               "bet": {"amount": 1_000, "currency": "EUR"}, "policy": "casino", "brand_id": "b1",
               "jackpots": [{"pool_id": pool_id}]}
    consumer = AIOKafkaConsumer(topic_name(settings, JP_CONTRIBUTION_RECORDED),
                                bootstrap_servers=bootstrap_servers(settings.kafka_url), group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url))
    await producer.start()
    try:
        for _ in range(3):  # delivered three times, counted once
            await producer.send_and_wait(topic_name(settings, GAME_ROUNDS), json.dumps(message).encode(),
                                         key=wallet_key(stack.tenant_id, player))
        grown = await until(lambda: _pool_at(client, pool_id, 120), what="the contribution")
        assert grown["size"] == 120
        events = []
        deadline = time.monotonic() + 10
        while len(events) < 1 and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                events += [json.loads(r.value) for r in records
                           if json.loads(r.value).get("pool_id") == pool_id]
        event = events[0]
        assert (event["tenant_id"], event["brand_id"], event["region"], event["round_id"], event["provider"]) == (
            stack.tenant_id, "b1", "mt", round_id, "acme")
        assert event["contribution_id"] == f"round:acme:{round_id}:{player}" and event["amount"] == 20
        # A later round of the same player, on the same partition, is applied after the
        # duplicates: once its contribution shows, every duplicate has been handled.
        marker = {**message, "round_id": uid("marker")}
        await producer.send_and_wait(topic_name(settings, GAME_ROUNDS), json.dumps(marker).encode(),
                                     key=wallet_key(stack.tenant_id, player))
        await until(lambda: _pool_at(client, pool_id, 140), what="the marker round's contribution")
    finally:
        await producer.stop()
        await consumer.stop()
    assert await cash(client, player) == 8_000
    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        operation = f"jp:{pool_id}:contribution:round:acme:{round_id}:{player}"
        await ledger.wait_for_rows(operation, 2)
        legs = await ledger.entries(operation)
        assert [(p.debit_account, p.credit_account, p.amount_minor) for p in legs] == [
            ("system:PROVIDER_SETTLEMENT:acme:EUR", "system:JACKPOT_CONTRIBUTIONS:b1:EUR", 20),
            ("system:JACKPOT_CONTRIBUTIONS:b1:EUR", f"system:JACKPOT_LIABILITY:{pool_id}:EUR", 20),
        ]


async def test_a_must_drop_pool_drops_inside_its_range_and_reveals_its_point(stack, client):
    player = uid("p")
    await create_player(client, player)
    view = await create_pool(client, kind="must_drop", seed_amount=1_000, drop_min=1_500, drop_max=2_000,
                             cap=2_000, contribution_bps=1_000)
    pool_id = view["pool_id"]
    before = await pool(client, pool_id)
    commitment = before["tiers"][0]["drop_commitment"]
    assert commitment and before["tiers"][0]["drop_range"] == [1_500, 2_000]
    wins = []
    for _ in range(25):  # 100 a contribution: the point in [1500, 2000] is reached within 10
        status, body = await contribute(client, pool_id, 1_000, player=player)
        assert status == 200, body
        wins += body["wins"]
        if wins:
            break
    [win] = wins
    assert 1_500 <= win["amount"] <= 2_000
    await until(lambda: _cash_is(client, player, win["amount"]), what="the must-drop credit")
    after = await until(lambda: _settled(client, pool_id), what="the saga's end")
    assert after["size"] == 1_000 and after["tiers"][0]["drop_commitment"] != commitment
    await check_conservation_in_postgres(stack, pool_id, after)


async def test_reconfiguration_is_audited_and_validated(stack, client):
    view = await create_pool(client, kind="progressive", seed_amount=100, contribution_bps=100, cap=10_000)
    pool_id = view["pool_id"]
    head = (await pool(client, pool_id))["chain_head"]
    status, body = await client.call("PATCH", f"/v1/jp/pools/{pool_id}", {
        "contribution_bps": 250, "tiers": [{"name": "main", "cap": 20_000}], "reason": "promo week",
        "change_id": "chg-1"})
    assert status == 200, body
    assert body["config"]["contribution_bps"] == 250 and body["config"]["tiers"][0]["cap"] == 20_000
    after = await until(lambda: _version_above(client, pool_id, head["seq"]), what="the new configuration")
    assert after["chain_head"]["seq"] == head["seq"] + 1 and after["contribution_bps"] == 250
    status, body = await client.call("PATCH", f"/v1/jp/pools/{pool_id}", {"tiers": [{"name": "main", "cap": 50}],
                                                                          "reason": "bad"})
    assert (status, body["error"]["code"]) == (422, "invalid_config")
    status, body = await client.call("PATCH", f"/v1/jp/pools/{pool_id}", {"contribution_bps": 1})
    assert (status, body["error"]["code"]) == (400, "invalid_request")  # a change needs its reason


async def _version_above(client, pool_id: str, seq: int) -> dict | None:
    view = await pool(client, pool_id)
    return view if view["chain_head"]["seq"] > seq else None


async def test_another_tenants_key_reaches_none_of_the_pools(stack, client):
    view = await create_pool(client, kind="progressive", seed_amount=300, contribution_bps=100)
    pool_id = view["pool_id"]
    before = await pool(client, pool_id)
    async with BankrollClient(stack.base_url, "other", "other-secret") as other:
        status, body = await other.call("GET", f"/v1/jp/pools/{pool_id}")
        assert (status, body["error"]["code"]) == (404, "pool_not_found")
        assert pool_id not in [p["pool_id"] for p in (await other.call("GET", "/v1/jp/pools"))[1]["pools"]]
        status, body = await contribute(other, pool_id, 1_000)
        assert (status, body["error"]["code"]) == (404, "pool_not_found")
        status, body = await other.call("POST", "/v1/jp/triggers", {
            "trigger_id": uid("t"), "pool_id": pool_id, "reason": "x", "selection": {"player_id": "p", "round_id": "r"}})
        assert (status, body["error"]["code"]) == (404, "pool_not_found")
        status, body = await other.call("PATCH", f"/v1/jp/pools/{pool_id}", {"contribution_bps": 5, "reason": "x"})
        assert (status, body["error"]["code"]) == (404, "pool_not_found")
    assert await pool(client, pool_id) == before
