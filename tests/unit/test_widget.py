"""The jackpot widget: what it shows of a pool snapshot, its filters, and its routes on a
fake Redis (the stored snapshots and their channel as RedisPoolCache writes them)."""
from __future__ import annotations

import asyncio
import hashlib
import json
from types import SimpleNamespace

import fakeredis
import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.api.server import create_web_app
from app.api.widget import shows, widget_view
from app.domain.jackpot.core import Context, Contribute, CreatePool, Trigger, decide, evolve, pool_view
from app.domain.jackpot.state import PoolState, TierConfig
from config import Settings
from storage.redis.stores import pool_cache_key, pool_channel, pool_index_key

SEED = b"server-seed-for-widget-tests"
T0 = 1_763_000_000_000

POOL_KEYS = {"pool_id", "name", "kind", "status", "currency", "exponent", "region", "brand_ids", "size", "version",
             "tiers"}
TIER_KEYS = {"tier", "size", "last_winner"}


def real_snapshot(kind: str = "multi_tier", pool_id: str = "grand-1", name: str = "Grand Prize") -> dict:
    """A snapshot exactly as the jackpot worker stores it: pool_view of a pool that took a
    contribution and paid a win, plus its display name."""
    state = PoolState.empty("dev", pool_id)
    fields = {
        "multi_tier": dict(contribution_bps=1_000, tiers=(
            TierConfig("mini", 100, 300, 6_000, 300_000_000),
            TierConfig("major", 1_000, None, 3_000, 20_000_000),
            TierConfig("grand", 10_000, 20_000, 1_000, 0, 12_000, 15_000))),
        "timed": dict(seed_minor=1_000, contribution_bps=100, deadline_ms=T0 + 60_000, period_ms=60_000),
    }[kind]
    tier = "major" if kind == "multi_tier" else ""
    commands = [
        CreatePool(pool_id, kind, ("b1", "b2"), "MT", "EUR", hashlib.sha256(SEED).hexdigest(), **fields),
        Contribute("c1", "b1", "MT", "r1", "player-42", 10_000, "EUR"),
        Trigger("t1", "player-42", "r1", "b1", "MT", tier),
    ]
    for n, command in enumerate(commands):
        decision = decide(state, command, Context("dev", T0 + n * 1_000, SEED))
        state = evolve(state, decision.events)
    return {**pool_view(state), "name": name}


def snapshot(pool_id: str, version: int, size: int, brand_ids: tuple[str, ...] = ("b1",), **extra) -> dict:
    return {"pool_id": pool_id, "name": "", "kind": "progressive", "status": "open", "currency": "EUR",
            "brand_ids": list(brand_ids), "region": "MT", "network": len(brand_ids) > 1, "contribution_bps": 100,
            "min_bet": 1, "size": size, "participants": 3, "deadline_ms": None, "server_seed_hash": "ab" * 32,
            "chain_head": {"seq": 2, "hash": "cd" * 32}, "open_payouts": 0, "version": version,
            "tiers": [{"tier": "main", "size": size, "seed": 1_000, "cap": None, "reserve": 0, "share_bps": 10_000,
                       "odds": "0.001", "odds_ppb": 1_000_000, "cycle": 0, "drop_range": None,
                       "drop_commitment": None, "last_winner": None}], **extra}


def test_widget_view_keeps_exactly_the_public_fields_of_a_real_pool_snapshot():
    raw = real_snapshot()
    view = widget_view(raw)
    assert set(view) == POOL_KEYS
    assert all(set(tier) == TIER_KEYS for tier in view["tiers"])
    assert (view["pool_id"], view["name"], view["kind"], view["currency"], view["exponent"]) == (
        "grand-1", "Grand Prize", "multi_tier", "EUR", 2)
    assert view["brand_ids"] == ["b1", "b2"] and view["region"] == "MT" and view["status"] == "open"
    assert (view["size"], view["version"]) == (raw["size"], raw["version"])
    assert [(t["tier"], t["size"]) for t in view["tiers"]] == [(t["tier"], t["size"]) for t in raw["tiers"]]
    major = view["tiers"][1]
    assert major["last_winner"] == {"player": "pl***", "amount": raw["tiers"][1]["last_winner"]["amount"],
                                    "at_ms": T0 + 2_000}
    assert view["tiers"][0]["last_winner"] is None
    text = json.dumps(view)
    assert "player-42" not in text
    assert raw["server_seed_hash"] not in text and raw["chain_head"]["hash"] not in text
    assert raw["tiers"][2]["drop_commitment"] not in text


def test_a_timed_pool_shows_its_deadline_and_other_kinds_do_not():
    timed = widget_view(real_snapshot("timed", "hourly"))
    assert set(timed) == POOL_KEYS | {"deadline_ms"}
    assert timed["deadline_ms"] == T0 + 60_000
    assert "deadline_ms" not in widget_view(snapshot("p1", 1, 500))


def test_the_exponent_follows_the_currency():
    assert widget_view(snapshot("p1", 1, 500, currency="JPY"))["exponent"] == 0
    assert widget_view(snapshot("p1", 1, 500, currency="KWD"))["exponent"] == 3


def test_a_missing_name_is_shown_as_empty():
    raw = snapshot("p1", 1, 500)
    del raw["name"]
    assert widget_view(raw)["name"] == ""


@pytest.mark.parametrize("brand_id, pool_id, shown", [
    (None, None, True),
    ("b1", None, True),
    ("b2", None, True),
    ("b3", None, False),
    (None, "p1", True),
    (None, "p2", False),
    ("b2", "p1", True),
    ("b3", "p1", False),
])
def test_filters_by_brand_and_pool(brand_id, pool_id, shown):
    assert shows(snapshot("p1", 1, 500, brand_ids=("b1", "b2")), brand_id, pool_id) is shown


def test_a_pool_that_does_not_exist_is_never_shown():
    assert not shows({"pool_id": "p1", "exists": False}, None, None)
    assert not shows({"pool_id": "p1", "exists": False}, None, "p1")


# ---------------------------------------------------------------- routes on a fake Redis

async def store(redis, tenant_id: str, snap: dict) -> None:
    """What RedisPoolCache.put does in its Lua script (fakeredis runs no Lua here)."""
    raw = json.dumps(snap)
    await redis.hset(pool_cache_key(tenant_id, snap["pool_id"]), mapping={"version": snap.get("version", 0), "json": raw})
    await redis.sadd(pool_index_key(tenant_id), snap["pool_id"])
    await redis.publish(pool_channel(tenant_id), raw)


@pytest.fixture
async def widget():
    redis = fakeredis.FakeAsyncRedis()
    app = create_web_app(Settings.from_env({}), services=SimpleNamespace(redis=redis))  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as client:
        yield SimpleNamespace(http=client, redis=redis)
    await redis.aclose()


async def test_pools_lists_the_tenants_pools_filtered(widget):
    await store(widget.redis, "t1", snapshot("p1", 3, 1_500, brand_ids=("b1",)))
    await store(widget.redis, "t1", snapshot("p2", 1, 700, brand_ids=("b2",)))
    await store(widget.redis, "t1", {"pool_id": "p3", "exists": False})
    await store(widget.redis, "t2", snapshot("p9", 1, 900))

    async def pool_ids(query: str) -> list[str]:
        response = await widget.http.get(f"/jp/widget/pools?{query}")
        assert response.status == 200
        assert response.headers["Cache-Control"] == "no-store"
        return [p["pool_id"] for p in (await response.json())["pools"]]

    assert await pool_ids("tenant=t1") == ["p1", "p2"]
    assert await pool_ids("tenant=t1&brand_id=b2") == ["p2"]
    assert await pool_ids("tenant=t1&pool_id=p1") == ["p1"]
    assert await pool_ids("tenant=t1&pool_id=p9") == []
    assert await pool_ids("tenant=t2") == ["p9"]
    assert await pool_ids("tenant=nobody") == []
    body = await (await widget.http.get("/jp/widget/pools?tenant=t1&pool_id=p1")).json()
    assert body["pools"][0] == widget_view(snapshot("p1", 3, 1_500))


@pytest.mark.parametrize("path", ["/jp/widget", "/jp/widget/pools", "/jp/widget/stream"])
@pytest.mark.parametrize("query, message", [
    ("", "`tenant` is required"),
    ("?brand_id=b1", "`tenant` is required"),
    ("?tenant=", "`tenant` must be"),
    ("?tenant=t1&pool_id=%3Cscript%3E", "`pool_id` must be"),
    ("?tenant=t1&brand_id=a%20b", "`brand_id` must be"),
])
async def test_a_missing_or_bad_id_is_a_400_in_the_standard_shape(widget, path, query, message):
    response = await widget.http.get(path + query)
    assert response.status == 400
    body = await response.json()
    assert body["error"]["code"] == "invalid_request"
    assert body["error"]["message"].startswith(message)


async def test_the_page_and_its_assets_are_served_under_a_strict_content_security_policy(widget):
    for path, kind in [("/jp/widget?tenant=t1", "text/html"), ("/jp/widget.js", "javascript"),
                       ("/jp/widget.css", "text/css")]:
        response = await widget.http.get(path)
        assert response.status == 200, path
        assert kind in response.headers["Content-Type"]
        csp = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "connect-src 'self'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    page = await (await widget.http.get("/jp/widget?tenant=t1")).text()
    assert "<script>" not in page and "<style>" not in page and " style=" not in page


async def read_event(content, timeout_s: float = 5.0) -> tuple[str, dict]:
    lines: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(content.readline(), timeout_s)).decode().rstrip("\n")
        if line == "":
            if "data" in lines:
                return lines.get("event", "message"), json.loads(lines["data"])
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        lines[name] = value


async def test_stream_sends_the_current_pools_then_each_newer_matching_snapshot(widget):
    await store(widget.redis, "t1", snapshot("p1", 3, 1_500))
    response = await widget.http.get("/jp/widget/stream?tenant=t1&brand_id=b1")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert await read_event(response.content) == ("pools", {"pools": [widget_view(snapshot("p1", 3, 1_500))]})

    await store(widget.redis, "t1", snapshot("p1", 3, 1_500))  # a version already sent
    await store(widget.redis, "t1", snapshot("p9", 1, 100, brand_ids=("b9",)))  # another brand's pool
    await store(widget.redis, "t2", snapshot("p1", 8, 9_999))  # another tenant
    await store(widget.redis, "t1", snapshot("p1", 4, 1_750))
    assert await read_event(response.content) == ("pool", widget_view(snapshot("p1", 4, 1_750)))
    await store(widget.redis, "t1", snapshot("p2", 1, 300, brand_ids=("b1", "b2")))
    assert await read_event(response.content) == ("pool", widget_view(snapshot("p2", 1, 300, brand_ids=("b1", "b2"))))
    response.close()


async def test_a_closed_stream_gives_back_its_subscription(widget):
    response = await widget.http.get("/jp/widget/stream?tenant=t1")
    await read_event(response.content)
    assert (await widget.redis.pubsub_numsub(pool_channel("t1")))[0][1] == 1
    response.close()
    for _ in range(50):
        if (await widget.redis.pubsub_numsub(pool_channel("t1")))[0][1] == 0:
            break
        await asyncio.sleep(0.1)
    assert (await widget.redis.pubsub_numsub(pool_channel("t1")))[0][1] == 0

    again = await widget.http.get("/jp/widget/stream?tenant=t1")
    await read_event(again.content)
    await store(widget.redis, "t1", snapshot("p1", 1, 100))
    assert (await read_event(again.content))[1]["size"] == 100
    again.close()


async def test_many_streams_of_one_tenant_share_one_subscription(widget):
    responses = [await widget.http.get("/jp/widget/stream?tenant=t1") for _ in range(5)]
    for response in responses:
        await read_event(response.content)
    assert (await widget.redis.pubsub_numsub(pool_channel("t1")))[0][1] == 1
    await store(widget.redis, "t1", snapshot("p1", 1, 100))
    for response in responses:
        assert (await read_event(response.content))[1]["size"] == 100
        response.close()
