"""Redis adapters: the wallet and pool snapshot caches and the signature replay guard."""
from __future__ import annotations

import redis.asyncio as aioredis

# Store the snapshot only when it is not older than the cached one, so a late write from
# a worker that just lost the partition cannot roll a balance back.
_STORE_IF_NEWER = """
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) > tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
"""
_PUT_IF_NEWER = _STORE_IF_NEWER + "return 1\n"

# The pool snapshot's write also indexes the pool for listing and publishes the snapshot,
# in one script, so a widget subscribed to the tenant's channel never misses a stored
# version and never sees one that lost to a newer write.
_PUT_POOL_IF_NEWER = _STORE_IF_NEWER + """
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PUBLISH', KEYS[3], ARGV[2])
return 1
"""


def worker_key_prefix(app_id: str) -> str:
    """Worker heartbeats (partitions owned, metrics URL), per Faust app so deployments
    sharing one Redis do not mix."""
    return f"bankroll:worker:{app_id}:"


def wallet_cache_key(tenant_id: str, player_id: str) -> str:
    return f"bankroll:wallet:{tenant_id}:{player_id}"


class RedisWalletCache:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._put = client.register_script(_PUT_IF_NEWER)

    async def put(self, tenant_id: str, player_id: str, version: int, snapshot_json: str, ttl_s: int) -> bool:
        stored = await self._put(keys=[wallet_cache_key(tenant_id, player_id)], args=[version, snapshot_json, ttl_s])
        return bool(stored)

    async def queue_put(self, pipe: "aioredis.client.Pipeline", tenant_id: str, player_id: str, version: int,
                        snapshot_json: str, ttl_s: int) -> None:
        """The same write as put(), queued on a pipeline so a batch costs one round trip."""
        await self._put(keys=[wallet_cache_key(tenant_id, player_id)], args=[version, snapshot_json, ttl_s],
                        client=pipe)

    async def get(self, tenant_id: str, player_id: str) -> str | None:
        value = await self._client.hget(wallet_cache_key(tenant_id, player_id), "json")
        return value.decode() if isinstance(value, bytes) else value


def pool_cache_key(tenant_id: str, pool_id: str) -> str:
    return f"bankroll:jp:pool:{tenant_id}:{pool_id}"


def pool_index_key(tenant_id: str) -> str:
    """The set of a tenant's pool ids that have (or had) a snapshot."""
    return f"bankroll:jp:pools:{tenant_id}"


def pool_channel(tenant_id: str) -> str:
    """Pub/sub channel carrying every stored pool snapshot of a tenant (JSON)."""
    return f"bankroll:jp:updates:{tenant_id}"


class RedisPoolCache:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._put = client.register_script(_PUT_POOL_IF_NEWER)

    def _keys(self, tenant_id: str, pool_id: str) -> list[str]:
        return [pool_cache_key(tenant_id, pool_id), pool_index_key(tenant_id), pool_channel(tenant_id)]

    async def put(self, tenant_id: str, pool_id: str, version: int, view_json: str, ttl_s: int) -> bool:
        stored = await self._put(keys=self._keys(tenant_id, pool_id), args=[version, view_json, ttl_s, pool_id])
        return bool(stored)

    async def queue_put(self, pipe: "aioredis.client.Pipeline", tenant_id: str, pool_id: str, version: int,
                        view_json: str, ttl_s: int) -> None:
        await self._put(keys=self._keys(tenant_id, pool_id), args=[version, view_json, ttl_s, pool_id], client=pipe)

    async def get(self, tenant_id: str, pool_id: str) -> str | None:
        value = await self._client.hget(pool_cache_key(tenant_id, pool_id), "json")
        return value.decode() if isinstance(value, bytes) else value

    async def list(self, tenant_id: str) -> list[str]:
        pool_ids = sorted(m.decode() if isinstance(m, bytes) else m
                          for m in await self._client.smembers(pool_index_key(tenant_id)))
        if not pool_ids:
            return []
        async with self._client.pipeline(transaction=False) as pipe:
            for pool_id in pool_ids:
                pipe.hget(pool_cache_key(tenant_id, pool_id), "json")
            values = await pipe.execute()
        return [v.decode() if isinstance(v, bytes) else v for v in values if v is not None]


class RedisSignatureGuard:
    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client

    async def first_use(self, signature: str, ttl_s: int) -> bool:
        return bool(await self._client.set(f"bankroll:sig:{signature}", b"1", nx=True, ex=ttl_s))


def connect(url: str, max_connections: int = 64) -> aioredis.Redis:
    """A client whose pool waits for a free connection instead of failing under load."""
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=5)
    return aioredis.Redis(connection_pool=pool)
