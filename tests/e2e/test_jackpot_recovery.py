"""kill -9 tests of the jackpot path: workers die while pools take contributions, drop and
pay; a new worker takes over from the changelogs; clients and the broker deliver
everything again. No contribution may count twice, no win may be lost or paid twice, and
a timed pool's deadline survives the restart."""
from __future__ import annotations

import asyncio
import time

import pytest

from app.domain.jackpot.core import ledger_conservation, payout_account
from tests.e2e.helpers import Ledger, cash, create_player, uid
from tests.e2e.test_jackpot_api import config_of, create_pool, pool, pool_postings
from tests.e2e.test_recovery import kill_9_midway, wait_until

pytestmark = pytest.mark.integration

BET, BPS = 1_000, 100  # every contribution is 10


async def contribute_until_accepted(client, body: dict, attempts: int = 60) -> dict:
    """A game server retries a contribution until it has an answer, as it must."""
    for _ in range(attempts):
        try:
            status, reply = await client.call("POST", "/v1/jp/contributions", body)
        except Exception:  # the connection dropped while the worker was down
            status, reply = 0, None
        if status == 200:
            return reply
        await asyncio.sleep(0.5)
    raise AssertionError(f"contribution {body['contribution_id']} never accepted: {status} {reply}")


async def test_kill_9_while_pools_take_contributions_and_pay_counts_and_pays_everything_once(stack, client):
    players = [uid("p") for _ in range(6)]
    for player in players:
        await create_player(client, player)
    pool_ids = []
    for _ in range(3):
        view = await create_pool(client, kind="progressive", seed_amount=1_000, contribution_bps=BPS, odds="0.05")
        pool_ids.append(view["pool_id"])
    bodies = [{"contribution_id": uid("c"), "brand_id": "b1", "pool_id": pool_ids[i % 3], "round_id": uid("r"),
               "player_id": players[i % len(players)], "bet": {"amount": BET, "currency": "EUR"}}
              for i in range(240)]
    answered_before = await kill_9_midway(stack, lambda body: client.call("POST", "/v1/jp/contributions", body),
                                          bodies)

    # Every contribution again, then once more: the answers must be the first ones, also
    # for those answered before the worker died.
    first = await asyncio.gather(*(contribute_until_accepted(client, b) for b in bodies))
    again = await asyncio.gather(*(contribute_until_accepted(client, b) for b in bodies))
    assert first == again
    kept = [(answer[1], now) for answer, now in zip(answered_before, first)
            if not isinstance(answer, BaseException) and answer[0] == 200]
    changed = [(before, now) for before, now in kept if before != now]
    assert kept and not changed, f"{len(changed)} answers changed after the restart, e.g. {changed[:2]}"

    async def saga_done():
        views = [await pool(client, p) for p in pool_ids]
        return views if all(v["open_payouts"] == 0 for v in views) else None

    views = await wait_until(saga_done, 90, "every win credited")
    async with Ledger(stack.env["DATABASE_URL"], stack.tenant_id) as ledger:
        paid_total = 0
        for view in views:
            pool_id = view["pool_id"]
            mine = [b for b in bodies if b["pool_id"] == pool_id]

            async def flushed():
                figures, _ = ledger_conservation(await pool_postings(ledger, pool_id), config_of(view))
                sizes = sum(t["size"] + t["reserve"] for t in view["tiers"])
                return figures if figures.pools_minor == sizes else None

            figures = await wait_until(flushed, 30, "the pool's rows in PostgreSQL")
            assert figures.balanced, figures
            assert figures.contributions_minor == len(mine) * BET * BPS // 10_000, (pool_id, figures)
            paid_total += figures.payouts_minor

        async def payouts_cleared():
            return (await ledger.balances()).get(payout_account("EUR"), 0) == 0

        await wait_until(payouts_cleared, 30, "every requested payout credited in the ledger")
        balances = await ledger.balances()
        credited = sum(balances.get(f"player:{p}:CASH:EUR", 0) for p in players)
        assert credited == paid_total > 0
        assert sum([await cash(client, p) for p in players]) == paid_total


async def test_a_timed_pools_deadline_survives_a_worker_restart(stack, client):
    player = uid("p")
    await create_player(client, player)
    deadline_s = int(time.time()) + 6
    view = await create_pool(client, kind="timed", seed_amount=700, contribution_bps=BPS, deadline=deadline_s,
                             period_s=3_600)
    pool_id = view["pool_id"]
    status, body = await client.call("POST", "/v1/jp/contributions", {
        "contribution_id": uid("c"), "brand_id": "b1", "pool_id": pool_id, "round_id": "r1", "player_id": player,
        "bet": {"amount": BET, "currency": "EUR"}})
    assert status == 200 and body["sizes"] == {"main": 710}, body
    for name in list(stack.workers):
        stack.kill_worker(name)
    stack.start_worker(uid("worker"))

    async def dropped():
        return await cash(client, player) == 710

    await wait_until(dropped, 60, "the deadline drop paid by the new worker")
    after = await pool(client, pool_id)
    assert after["size"] == 700 and after["deadline_ms"] == (deadline_s + 3_600) * 1000
    assert after["tiers"][0]["last_winner"]["amount"] == 710
