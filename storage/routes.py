"""The owners of routed ids, remembered by the process that reads them.

An id an operation claimed (`bet:{id}`, `deposit:{id}`, `withdrawal:{id}`) belongs to its
player for good: the row is never changed or removed. So an owner, once known, can be
kept in memory for as long as the process runs, and a settle that follows its bet's
placement through the same web process needs no PostgreSQL round trip to find the
player. Only owners are remembered; an id without one is asked again next time."""
from __future__ import annotations

from storage.ports import DepositRoutes

# About 100 bytes an entry: the ids of the last hundred thousand operations.
ROUTES_KEPT = 100_000


class KnownRoutes:
    """A DepositRoutes that remembers the owners it has seen, the newest ROUTES_KEPT."""

    def __init__(self, routes: DepositRoutes, capacity: int = ROUTES_KEPT) -> None:
        self._routes = routes
        self._capacity = capacity
        self._owners: dict[tuple[str, str], str] = {}

    def remember(self, tenant_id: str, route: str, player_id: str) -> None:
        """An owner learned elsewhere: the agent answered that it claimed the id for the player."""
        owners = self._owners
        owners[(tenant_id, route)] = player_id
        if len(owners) > self._capacity:
            del owners[next(iter(owners))]

    async def lookup(self, tenant_id: str, route: str) -> str | None:
        owner = self._owners.get((tenant_id, route))
        if owner is None:
            owner = await self._routes.lookup(tenant_id, route)
            if owner is not None:
                self.remember(tenant_id, route, owner)
        return owner

    async def claim(self, tenant_id: str, route: str, player_id: str) -> str:
        owner = await self._routes.claim(tenant_id, route, player_id)
        self.remember(tenant_id, route, owner)
        return owner
