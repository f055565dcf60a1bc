"""Demo traffic for `make run`: `python -m app.demo`.

Creates a few demo players and one pool of each kind, then streams game rounds with
jackpot contributions on `game.rounds` at DEMO_ROUNDS_PER_S, so the pools grow and drop
where anyone can watch them: the widget page at /jp/widget?tenant=<tenant> and the log
lines this process prints. Started by `make run` (`python -m app.run --demo`) only."""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid

from aiokafka import AIOKafkaProducer

from app.api.bus import bootstrap_servers, ensure_topics
from app.client.signed import BankrollClient
from app.messages import wallet_key
from app.topics import GAME_ROUNDS, topic_name
from config import Settings, load_settings

log = logging.getLogger("bankroll.demo")

BRAND, REGION, CURRENCY = "demo-brand", "local", "EUR"
PLAYERS = 20
FUNDING_MINOR = 10_000_000
TOP_UP_BELOW_MINOR = 1_000_000


def demo_pools(now_s: int) -> list[dict]:
    common = {"brand_ids": [BRAND], "region": REGION, "currency": CURRENCY}
    return [
        {"pool_id": "demo-grand", "name": "Grand Progressive", "kind": "progressive", "seed_amount": 100_000,
         "contribution_bps": 100, "odds": "0.0005", **common},
        {"pool_id": "demo-tiers", "name": "Mini / Major / Grand", "kind": "multi_tier", "contribution_bps": 150,
         "tiers": [{"name": "mini", "seed_amount": 1_000, "cap": 5_000, "share_bps": 5_000, "odds": "0.005"},
                   {"name": "major", "seed_amount": 10_000, "share_bps": 3_000, "odds": "0.0005"},
                   {"name": "grand", "seed_amount": 100_000, "share_bps": 2_000, "odds": "0.00005"}], **common},
        {"pool_id": "demo-mustdrop", "name": "Must Drop by 90", "kind": "must_drop", "seed_amount": 5_000,
         "drop_min": 6_000, "drop_max": 9_000, "cap": 9_000, "contribution_bps": 200, **common},
        {"pool_id": "demo-hourly", "name": "Every Two Minutes", "kind": "timed", "seed_amount": 2_000,
         "contribution_bps": 50, "deadline": now_s + 120, "period_s": 120, **common},
    ]


async def wait_ready(client: BankrollClient, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status, _ = await client.call("GET", "/ready")
            if status == 200:
                return
        except OSError:
            pass
        await asyncio.sleep(1)
    raise TimeoutError("Bankroll did not become ready")


async def set_up(client: BankrollClient) -> list[str]:
    for pool in demo_pools(int(time.time())):
        status, body = await client.call("POST", "/v1/jp/pools", pool)
        if status not in (201, 409):
            raise RuntimeError(f"creating {pool['pool_id']}: {status} {body}")
    players = [f"demo-player-{i:02d}" for i in range(1, PLAYERS + 1)]
    for player in players:
        status, body = await client.call("POST", "/v1/players", {"player_id": player, "currency": CURRENCY,
                                                                 "country": "MT"})
        if status == 201:
            await top_up(client, player)
    return players


async def top_up(client: BankrollClient, player: str) -> None:
    status, body = await client.call("POST", "/v1/adjustments", {
        "adjustment_id": f"demo-funding-{uuid.uuid4().hex[:12]}", "player_id": player, "wallet": "CASH",
        "currency": CURRENCY, "amount": FUNDING_MINOR, "reason": "demo funding"})
    if status != 201:
        log.warning("top-up of %s refused: %s %s", player, status, body)


def game_round(tenant_id: str, player: str, rng: random.Random) -> dict:
    bet = rng.randrange(100, 501)
    win = bet * rng.choice((0, 0, 0, 1, 2, 5)) if rng.random() < 0.4 else 0
    return {"round_id": f"demo-{uuid.uuid4().hex}", "tenant_id": tenant_id, "player_id": player,
            "provider": "demo-games", "bet": {"amount": bet, "currency": CURRENCY},
            "win": {"amount": win, "currency": CURRENCY}, "policy": "casino", "brand_id": BRAND, "region": REGION,
            "jackpots": [{"pool_id": p} for p in ("demo-grand", "demo-tiers", "demo-mustdrop", "demo-hourly")]}


async def report(client: BankrollClient, seen: dict[tuple[str, str], object]) -> None:
    status, body = await client.call("GET", f"/v1/jp/pools?brand_id={BRAND}")
    if status != 200:
        return
    sizes = []
    for pool in body["pools"]:
        for tier in pool["tiers"]:
            sizes.append(f"{pool['pool_id']}/{tier['tier']}={tier['size']}")
            last = tier["last_winner"]
            key = (pool["pool_id"], tier["tier"])
            if last is not None and seen.get(key) != last:
                if key in seen:
                    log.info("JACKPOT %s %s dropped: %s won %d minor units", pool["pool_id"], tier["tier"],
                             last["player"], last["amount"])
                seen[key] = last
            seen.setdefault(key, None)
    log.info("pool sizes (minor units): %s", " ".join(sizes))


async def run(settings: Settings) -> None:
    api_key = settings.api_keys[0]
    base_url = f"http://{settings.http_host}:{settings.http_port}"
    rng = random.Random()
    async with BankrollClient(base_url, api_key.key, api_key.secret) as client:
        await wait_ready(client)
        players = await set_up(client)
        await ensure_topics(settings)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url), linger_ms=5)
        await producer.start()
        log.info("demo traffic: %d rounds/s; watch http://%s:%d/jp/widget?tenant=%s", settings.demo_rounds_per_s,
                 settings.http_host, settings.http_port, api_key.tenant_id)
        seen: dict[tuple[str, str], object] = {}
        topic = topic_name(settings, GAME_ROUNDS)
        interval_s = 1 / settings.demo_rounds_per_s
        next_report = next_top_up = time.monotonic()
        try:
            while True:
                player = rng.choice(players)
                message = game_round(api_key.tenant_id, player, rng)
                await producer.send(topic, json.dumps(message).encode(), key=wallet_key(api_key.tenant_id, player))
                now = time.monotonic()
                if now >= next_report:
                    next_report = now + 10
                    await report(client, seen)
                if now >= next_top_up:
                    next_top_up = now + 60
                    for p in players:
                        status, body = await client.call("GET", f"/v1/wallets?player_id={p}&types=CASH")
                        if status == 200 and body["wallets"][0]["available"] < TOP_UP_BELOW_MINOR:
                            await top_up(client, p)
                await asyncio.sleep(interval_s)
        finally:
            await producer.stop()


def main() -> None:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if settings.demo_rounds_per_s == 0:
        return
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
