"""The HTTP API (aiohttp): `python -m app.api.server`.

Handlers validate, turn the request into a command, send it to the agent that owns the
key and map the agent's result code to a status. They decide nothing about money."""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api import handlers as h
from app.api import validation as v
from app.api.handlers import SERVICES, SETTINGS
from app.api.jackpot import add_jackpot_routes
from app.api.bus import CommandBus, ReplyTimeout
from app.api.errors import error, json_response
from app.api.openapi import openapi_document
from app.api.signing import AuthResult, check_request
from app.api.widget import add_widget_routes
from app.metrics import HTTP_ERRORS, HTTP_SECONDS
from config import Settings, load_settings
from storage.fx import FxRates, PostgresFxRates
from storage.ports import LedgerStore, PoolCache, SignatureGuard, WalletCache
from storage.postgres.migrate import migrate
from storage.postgres.stores import PostgresDepositRoutes, PostgresLedgerStore, create_pool
from storage.redis.stores import (
    RedisPoolCache, RedisSignatureGuard, RedisWalletCache, connect as connect_redis, worker_key_prefix,
)
from storage.routes import KnownRoutes

log = logging.getLogger("bankroll.web")


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Services:
    """What the handlers talk to; built at start-up, replaced by fakes in tests."""

    def __init__(
        self,
        bus: CommandBus,
        cache: WalletCache,
        routes: KnownRoutes,
        signatures: SignatureGuard,
        redis_client: aioredis.Redis,
        pool: asyncpg.Pool,
        ledger: LedgerStore,
        fx_rates: FxRates,
        pool_cache: PoolCache,
    ) -> None:
        self.bus = bus
        self.cache = cache
        self.routes = routes
        self.signatures = signatures
        self.redis = redis_client
        self.pool = pool
        self.ledger = ledger
        self.fx_rates = fx_rates
        self.pool_cache = pool_cache


def _services(request: web.Request) -> Services:
    return request.app[SERVICES]  # type: ignore[return-value]


def _signed(path: str) -> bool:
    # PSP webhooks carry the PSP's own signature instead of a service signature.
    return (path.startswith("/v1/") and not path.startswith("/v1/psp/")) or path.startswith("/w1api/")


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPNotFound:
        response = error("not_found", "no such route")
    except web.HTTPMethodNotAllowed:
        response = error("method_not_allowed", "method not allowed on this route")
    except v.InvalidRequest as exc:
        response = error("invalid_request", str(exc))
    except h.NotFound as exc:
        response = error(exc.code, str(exc))
    except ReplyTimeout:
        response = error("timeout", "the operation did not complete in time; retry with the same idempotency key")
    except (ConnectionError, OSError, RedisError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.warning("dependency unavailable: %r", exc)
        response = error("unavailable", "a dependency is unavailable; retry with the same idempotency key")
    except Exception:
        # A bug: logged with its traceback, answered in the documented error shape.
        log.exception("unhandled error on %s %s", request.method, request.path)
        response = error("internal_error", "internal error")
    if response.status >= 400 and response.content_type == "application/json":
        try:
            HTTP_ERRORS.labels(json.loads(response.body)["error"]["code"]).inc()
        except (KeyError, TypeError, ValueError):
            pass
    HTTP_SECONDS.labels(route, request.method, str(response.status)).observe(time.perf_counter() - started)
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _signed(request.path):
        return await handler(request)
    settings = request.app[SETTINGS]
    body = await request.read()
    api_key = settings.api_key(request.headers.get("X-Api-Key", ""))
    signature = request.headers.get("X-Signature")
    result = check_request(
        secret=api_key.secret if api_key else None,
        timestamp=request.headers.get("X-Timestamp"),
        signature=signature,
        method=request.method,
        path_with_query=request.raw_path,
        body=body,
        now_s=int(time.time()),
        max_skew_s=settings.signature_max_skew_s,
    )
    # Only a request that can write is refused when replayed: a read sent twice in one
    # second (a widget polling a balance) carries the same signature and changes nothing.
    if (
        result is AuthResult.OK
        and request.method not in SAFE_METHODS
        and not await _services(request).signatures.first_use(signature or "", 2 * settings.signature_max_skew_s)
    ):
        result = AuthResult.REPLAYED_SIGNATURE
    if result is not AuthResult.OK or api_key is None:
        return error(result, "the request signature was not accepted")
    request["tenant_id"] = api_key.tenant_id
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    return json_response(200, {"status": "alive"})


async def ready(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    services = _services(request)
    checks: dict[str, object] = {}
    checks["broker"] = await services.bus.broker_reachable()
    try:
        checks["postgres"] = await asyncio.wait_for(services.pool.fetchval("SELECT 1"), 2.0) == 1
    except Exception:
        checks["postgres"] = False
    try:
        checks["redis"] = bool(await asyncio.wait_for(services.redis.ping(), 2.0))
        owned: set[int] = set()
        workers = []
        async for key in services.redis.scan_iter(match=worker_key_prefix(settings.faust_app_id) + "*"):
            raw = await services.redis.get(key)
            if raw:
                info = json.loads(raw)
                owned.update(info["partitions"])
                workers.append({"worker_id": info["worker_id"], "partitions": info["partitions"],
                                "metrics_url": info.get("metrics_url", "")})
        checks["workers"] = sorted(workers, key=lambda w: w["worker_id"])
        missing = sorted(set(range(settings.topic_partitions)) - owned)
        checks["partitions_assigned"] = not missing
        if missing:
            checks["partitions_unassigned"] = missing
    except Exception:
        checks["redis"] = False
        checks["partitions_assigned"] = False
    is_ready = all(checks[name] for name in ("broker", "postgres", "redis", "partitions_assigned"))
    return json_response(200 if is_ready else 503, {"ready": is_ready, "checks": checks})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return json_response(200, openapi_document())


def create_web_app(settings: Settings, services: Services | None = None) -> web.Application:
    app = web.Application(middlewares=[observe, authenticate], client_max_size=64 * 1024)
    app[SETTINGS] = settings
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    add_widget_routes(app)
    app.router.add_post("/v1/players", h.create_player)
    app.router.add_put("/v1/players/{player_id}/limits", h.set_limits)
    app.router.add_get("/v1/players/{player_id}/limits", h.get_limits)
    app.router.add_put("/v1/players/{player_id}/kyc", h.set_status)
    app.router.add_get("/v1/players/{player_id}/postings", h.get_postings)
    app.router.add_get("/v1/players/{player_id}/audit", h.get_audit)
    app.router.add_post("/v1/deposits", h.create_deposit)
    app.router.add_post("/v1/psp/{psp}/webhooks", h.psp_webhook)
    app.router.add_post("/v1/bets/place", h.place_bet)
    app.router.add_post("/v1/bets/settle", h.settle_bet)
    app.router.add_post("/v1/bets/cancel", h.cancel_bet)
    app.router.add_post("/v1/holds/{hold_id}/capture", h.capture_hold)
    app.router.add_post("/v1/holds/{hold_id}/release", h.release_hold)
    app.router.add_post("/v1/withdrawals", h.create_withdrawal)
    app.router.add_get("/v1/withdrawals/{withdrawal_id}", h.get_withdrawal)
    app.router.add_post("/v1/bonuses", h.grant_bonus)
    app.router.add_post("/v1/fx/rates", h.add_fx_rate)
    app.router.add_post("/v1/fx/conversions", h.convert_fx)
    app.router.add_post("/v1/adjustments", h.adjust)
    app.router.add_get("/v1/wallets", h.get_wallets)
    add_jackpot_routes(app)
    if services is not None:
        app[SERVICES] = services
    else:
        app.cleanup_ctx.append(_connect)
    return app


async def _connect(app: web.Application):  # type: ignore[no-untyped-def]
    settings = app[SETTINGS]
    await migrate(settings.database_url)
    pool = await create_pool(settings.database_url, max_size=8)
    redis_client = connect_redis(settings.redis_url)
    bus = CommandBus(settings, redis_client)
    await bus.start()
    app[SERVICES] = Services(
        bus=bus,
        cache=RedisWalletCache(redis_client),
        routes=KnownRoutes(PostgresDepositRoutes(pool)),
        signatures=RedisSignatureGuard(redis_client),
        redis_client=redis_client,
        pool=pool,
        ledger=PostgresLedgerStore(pool),
        fx_rates=PostgresFxRates(pool),
        pool_cache=RedisPoolCache(redis_client),
    )
    log.info("Bankroll API listening on http://%s:%d", settings.http_host, settings.http_port)
    yield
    await bus.stop()
    await redis_client.aclose()
    await pool.close()


def main() -> None:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    web.run_app(
        create_web_app(settings), host=settings.http_host, port=settings.http_port, print=None, access_log=None
    )


if __name__ == "__main__":
    main()
