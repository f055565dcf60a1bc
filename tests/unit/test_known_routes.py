"""The web process remembers the owners of routed ids: an owner never changes, an id
without one is asked again, and only the newest are kept."""
from __future__ import annotations

from storage.memory.stores import MemoryDepositRoutes
from storage.routes import KnownRoutes


class Counted(MemoryDepositRoutes):
    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    async def lookup(self, tenant_id: str, deposit_id: str) -> str | None:
        self.lookups += 1
        return await super().lookup(tenant_id, deposit_id)


async def test_an_owner_is_asked_once_and_a_missing_one_every_time():
    stored = Counted()
    routes = KnownRoutes(stored, capacity=2)
    assert await routes.lookup("t", "bet:1") is None
    await stored.claim("t", "bet:1", "p1")  # claimed by the agent's commit meanwhile
    assert await routes.lookup("t", "bet:1") == "p1"
    assert await routes.lookup("t", "bet:1") == "p1"
    assert stored.lookups == 2
    assert await routes.lookup("other", "bet:1") is None  # tenants apart


async def test_owners_learned_from_answers_need_no_lookup_and_the_oldest_go_first():
    stored = Counted()
    routes = KnownRoutes(stored, capacity=2)
    for n in range(3):
        routes.remember("t", f"bet:{n}", f"p{n}")
        await stored.claim("t", f"bet:{n}", f"p{n}")
    assert await routes.lookup("t", "bet:2") == "p2" and await routes.lookup("t", "bet:1") == "p1"
    assert stored.lookups == 0
    assert await routes.lookup("t", "bet:0") == "p0"  # forgotten, so asked
    assert stored.lookups == 1
    assert await routes.claim("t", "bet:1", "p9") == "p1"
