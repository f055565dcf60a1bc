"""The live jackpot widget: a public page of pool sizes for casino front-ends.

The jackpot worker stores every pool change as a snapshot in Redis and publishes it on
the tenant's channel (storage/redis/stores.py). This module serves the page, the
snapshots as the page may show them (`widget_view`), and a Server-Sent Events stream of
them. Nothing here is signed: paths outside /v1/ carry only what a player may see."""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web
from redis.exceptions import RedisError

from app.api import validation as v
from app.api.errors import json_response
from app.api.handlers import SERVICES
from app.domain.money import minor_exponent
from storage.ports import PoolCache
from storage.redis.stores import RedisPoolCache, pool_channel

log = logging.getLogger("bankroll.widget")

STATIC = Path(__file__).resolve().parent / "static"
HEARTBEAT_S = 15.0
# How often an open stream looks at its socket: a closed one gives back its
# subscription within this time, not at the next heartbeat.
CLIENT_CHECK_S = 1.0
SUBSCRIBE_TIMEOUT_S = 5.0

# Scripts, styles and the event stream come from this server only, and nothing inline
# runs. Framing stays allowed: front-ends embed the widget in an iframe.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
       "base-uri 'none'; form-action 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}

_POOL_FIELDS = ("pool_id", "kind", "status", "currency", "region", "size", "version")


def widget_view(snapshot: dict) -> dict:
    """What a public front-end may show of a pool snapshot (core.pool_view plus "name").
    `exponent` is the currency's minor-unit exponent, so the page formats sizes without
    a table of its own."""
    view = {name: snapshot[name] for name in _POOL_FIELDS}
    view["name"] = snapshot.get("name") or ""
    view["brand_ids"] = list(snapshot["brand_ids"])
    view["exponent"] = minor_exponent(snapshot["currency"])
    view["tiers"] = [
        {"tier": tier["tier"], "size": tier["size"],
         "last_winner": None if tier.get("last_winner") is None else {
             "player": tier["last_winner"]["player"], "amount": tier["last_winner"]["amount"],
             "at_ms": tier["last_winner"]["at_ms"]}}
        for tier in snapshot["tiers"]
    ]
    if snapshot["kind"] == "timed":
        view["deadline_ms"] = snapshot.get("deadline_ms")
    return view


def shows(snapshot: dict, brand_id: str | None, pool_id: str | None) -> bool:
    """Whether a widget filtered by brand and pool shows this snapshot. A pool that does
    not exist (pool_view's {"exists": false}) is never shown."""
    if snapshot.get("exists") is False or "tiers" not in snapshot:
        return False
    if pool_id is not None and snapshot.get("pool_id") != pool_id:
        return False
    return brand_id is None or brand_id in snapshot.get("brand_ids", ())


def _parse(raw: str | bytes) -> dict | None:
    try:
        snapshot = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        log.warning("a pool snapshot in Redis is not JSON; skipped")
        return None
    return snapshot if isinstance(snapshot, dict) else None


def _filters(request: web.Request) -> tuple[str, str | None, str | None]:
    """tenant, brand_id and pool_id from the query string; other parameters are ignored
    (a front-end's page URL may carry its own)."""
    query = {name: request.query[name] for name in ("tenant", "brand_id", "pool_id") if name in request.query}
    if "tenant" not in query:
        raise v.InvalidRequest("`tenant` is required")
    tenant_id = v.ident(query, "tenant")
    return tenant_id, v.ident(query, "brand_id", required=False), v.ident(query, "pool_id", required=False)


# ---------------------------------------------------------------- the shared subscription

@dataclass(eq=False)
class _Listener:
    """One open stream: the newest matching view of each pool it has not sent yet."""

    tenant_id: str
    brand_id: str | None
    pool_id: str | None
    pending: dict[str, dict] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False

    def offer(self, view: dict) -> None:
        # A slow client skips versions instead of queueing them: each snapshot is the
        # whole pool, so the newest one is all it needs.
        queued = self.pending.get(view["pool_id"])
        if queued is None or queued["version"] < view["version"]:
            self.pending[view["pool_id"]] = view
            self.wake.set()

    def end(self) -> None:
        self.ended = True
        self.wake.set()


class PoolFeed:
    """One Redis subscription per web process, shared by every open widget stream.

    A pub/sub connection cannot serve other commands, so one per browser would empty
    the client's connection pool that the money routes use; instead this process
    subscribes once to each tenant channel that has a viewer and fans the snapshots out."""

    def __init__(self, redis_client: aioredis.Redis) -> None:
        self._redis = redis_client
        self._pubsub: aioredis.client.PubSub | None = None
        self._reader: asyncio.Task | None = None
        self._listeners: dict[str, set[_Listener]] = {}
        self._ready: dict[str, asyncio.Event] = {}
        # The server confirms subscriptions in the order they were asked for; each
        # confirmation releases the oldest waiting subscribe of its channel.
        self._confirmations: dict[str, collections.deque[asyncio.Event]] = {}
        self._lock = asyncio.Lock()
        self._closed = False

    async def listen(self, tenant_id: str, brand_id: str | None, pool_id: str | None) -> _Listener:
        """Register a stream; returns once Redis confirmed the tenant's subscription, so
        every snapshot stored after this call reaches the listener."""
        if self._closed:
            raise ConnectionError("the widget feed is closed")
        listener = _Listener(tenant_id, brand_id, pool_id)
        channel = pool_channel(tenant_id)
        async with self._lock:
            if self._pubsub is None:
                self._pubsub = self._redis.pubsub()
            self._listeners.setdefault(channel, set()).add(listener)
            ready = self._ready.get(channel)
            if ready is None:
                ready = self._ready[channel] = asyncio.Event()
                self._confirmations.setdefault(channel, collections.deque()).append(ready)
                try:
                    await self._pubsub.subscribe(channel)
                except BaseException:
                    self._confirmations[channel].remove(ready)
                    await self._forget_locked(listener)
                    raise
            if self._reader is None:
                self._reader = asyncio.create_task(self._read(self._pubsub))
        try:
            await asyncio.wait_for(ready.wait(), SUBSCRIBE_TIMEOUT_S)
        except BaseException:
            await self.forget(listener)
            raise
        if listener.ended:
            raise ConnectionError("the pool update subscription was lost")
        return listener

    async def forget(self, listener: _Listener) -> None:
        async with self._lock:
            await self._forget_locked(listener)

    async def _forget_locked(self, listener: _Listener) -> None:
        channel = pool_channel(listener.tenant_id)
        listeners = self._listeners.get(channel)
        if listeners is None or listener not in listeners:
            return
        listeners.discard(listener)
        if listeners:
            return
        # The last viewer of a tenant left: the tenant id comes from a public URL, so a
        # subscription kept for every id ever asked for would grow without bound.
        del self._listeners[channel]
        del self._ready[channel]
        if self._pubsub is not None:
            try:
                await self._pubsub.unsubscribe(channel)
            except (RedisError, OSError) as exc:
                log.warning("could not unsubscribe from pool updates: %r", exc)

    async def _read(self, pubsub: aioredis.client.PubSub) -> None:
        try:
            while True:
                message = await pubsub.get_message(timeout=CLIENT_CHECK_S)
                if message is None:
                    continue
                try:
                    self._dispatch(message)
                except Exception:
                    # A malformed snapshot is a bug upstream; it must not end every stream.
                    log.exception("pool update not dispatched")
        except asyncio.CancelledError:
            raise
        except (RedisError, OSError) as exc:
            log.warning("pool update subscription lost: %r", exc)
        except Exception:
            log.exception("pool update reader failed")
        # Updates may have been missed: every stream ends, and each page reconnects (or
        # polls) and starts again from the stored snapshots.
        async with self._lock:
            self._end_all()
        await self._close_pubsub(pubsub)

    def _dispatch(self, message: dict) -> None:
        channel = message["channel"]
        channel = channel.decode() if isinstance(channel, bytes) else channel
        if message["type"] == "subscribe":
            waiting = self._confirmations.get(channel)
            if waiting:
                waiting.popleft().set()
                if not waiting:
                    del self._confirmations[channel]
            return
        if message["type"] != "message":
            return
        listeners = self._listeners.get(channel)
        if not listeners:
            return
        snapshot = _parse(message["data"])
        if snapshot is None:
            return
        view: dict | None = None
        for listener in listeners:
            if shows(snapshot, listener.brand_id, listener.pool_id):
                view = view or widget_view(snapshot)
                listener.offer(view)

    def _end_all(self) -> None:
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.end()
        for ready in self._ready.values():
            ready.set()
        self._listeners.clear()
        self._ready.clear()
        self._confirmations.clear()
        self._pubsub = None
        self._reader = None

    @staticmethod
    async def _close_pubsub(pubsub: aioredis.client.PubSub) -> None:
        try:
            await pubsub.aclose()
        except (RedisError, OSError) as exc:
            log.warning("could not close the pool update subscription: %r", exc)

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            reader, pubsub = self._reader, self._pubsub
            self._end_all()
        if reader is not None:
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass
        if pubsub is not None:
            await self._close_pubsub(pubsub)


@dataclass(frozen=True)
class _Widget:
    cache: PoolCache
    feed: PoolFeed


WIDGET = web.AppKey("widget", _Widget)


async def _start(app: web.Application) -> None:
    # Runs after the app's cleanup context has connected the services.
    redis_client = app[SERVICES].redis
    app[WIDGET] = _Widget(RedisPoolCache(redis_client), PoolFeed(redis_client))


async def _shutdown(app: web.Application) -> None:
    # Open streams would otherwise hold the graceful shutdown until its timeout.
    if WIDGET in app:
        await app[WIDGET].feed.close()


# ---------------------------------------------------------------- handlers

async def current_views(cache: PoolCache, tenant_id: str, brand_id: str | None, pool_id: str | None) -> list[dict]:
    if pool_id is not None:
        raw = await cache.get(tenant_id, pool_id)
        stored = [] if raw is None else [raw]
    else:
        stored = await cache.list(tenant_id)
    snapshots = (_parse(raw) for raw in stored)
    return [widget_view(s) for s in snapshots if s is not None and shows(s, brand_id, pool_id)]


async def page(request: web.Request) -> web.StreamResponse:
    _filters(request)  # a bad link is a 400 here, not a page that stays empty
    return web.FileResponse(STATIC / "widget.html", headers=PAGE_HEADERS)


async def script(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "widget.js", headers=PAGE_HEADERS)


async def stylesheet(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC / "widget.css", headers=PAGE_HEADERS)


async def pools(request: web.Request) -> web.Response:
    tenant_id, brand_id, pool_id = _filters(request)
    views = await current_views(request.app[WIDGET].cache, tenant_id, brand_id, pool_id)
    response = json_response(200, {"pools": views})
    response.headers["Cache-Control"] = "no-store"
    return response


def _event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'), sort_keys=True)}\n\n".encode()


async def stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `pools` with the current views, then one `pool` per newer
    snapshot. Everything that can fail on Redis happens before the response starts, so
    such a failure is still answered 503 in the standard error shape."""
    tenant_id, brand_id, pool_id = _filters(request)
    widget = request.app[WIDGET]
    # Subscribe before reading the stored snapshots: a change between the two arrives
    # on the subscription, and versions already sent are dropped below.
    listener = await widget.feed.listen(tenant_id, brand_id, pool_id)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
    try:
        views = await current_views(widget.cache, tenant_id, brand_id, pool_id)
        sent = {view["pool_id"]: view["version"] for view in views}
        await response.prepare(request)
        await response.write(_event("pools", {"pools": views}))
        last_write = time.monotonic()
        while not listener.ended:
            try:
                await asyncio.wait_for(listener.wake.wait(), CLIENT_CHECK_S)
            except asyncio.TimeoutError:
                pass
            listener.wake.clear()
            if request.transport is None or request.transport.is_closing():
                break
            updates, listener.pending = listener.pending, {}
            for view in updates.values():
                if view["version"] > sent.get(view["pool_id"], -1):
                    sent[view["pool_id"]] = view["version"]
                    await response.write(_event("pool", view))
                    last_write = time.monotonic()
            if time.monotonic() - last_write >= HEARTBEAT_S:
                await response.write(b": heartbeat\n\n")
                last_write = time.monotonic()
        return response
    except ConnectionResetError:
        if not response.prepared:
            raise
        # The browser went away mid-write; there is nobody left to answer.
        return response
    finally:
        await widget.feed.forget(listener)


def add_widget_routes(app: web.Application) -> None:
    app.router.add_get("/jp/widget", page)
    app.router.add_get("/jp/widget.js", script)
    app.router.add_get("/jp/widget.css", stylesheet)
    app.router.add_get("/jp/widget/pools", pools)
    app.router.add_get("/jp/widget/stream", stream)
    app.on_startup.append(_start)
    app.on_shutdown.append(_shutdown)

