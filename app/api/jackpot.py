"""Jackpot handlers of the HTTP API (SPEC §3). Each validates its body, turns it into a
command for the agent that owns the pool (key tenant|pool on `jp.commands`) and maps the
result code to a status. Pool reads come from the Redis snapshot the agent keeps, or from
the agent itself when the snapshot is missing."""
from __future__ import annotations

import json
from dataclasses import asdict

from aiohttp import web

from app.api import validation as v
from app.api.errors import json_response, result_response
from app.api.handlers import body_of, now_ms, services
from app.domain.jackpot import core as jp
from app.domain.jackpot.rng import ppb_from_decimal
from app.messages import COMMAND_NAMES, READ_POOL, pool_key
from app.topics import JP_COMMANDS

MAX_TIERS = 8
# Contributions carried on game.rounds use the round's operation key as their id.
ROUND_CONTRIBUTION_PREFIX = "round:"
MAX_BRANDS = 64


async def dispatch_pool(request: web.Request, pool_id: str, kind: str, payload: dict,
                        operation_key: str = "") -> tuple[str, dict]:
    """The pool's agent computes the request hash itself, from the command."""
    tenant_id = request["tenant_id"]
    return await services(request).bus.request(
        pool_key(tenant_id, pool_id),
        {"tenant_id": tenant_id, "operation_key": operation_key, "request_hash": "", "now_ms": now_ms()},
        kind, payload, topic=JP_COMMANDS,
    )


async def send_command(request: web.Request, pool_id: str, command: object, operation_key: str = "") -> web.Response:
    payload = asdict(command)  # type: ignore[call-overload]
    code, reply = await dispatch_pool(request, pool_id, COMMAND_NAMES[type(command)], payload, operation_key)
    return result_response(code, reply)


# ---------------------------------------------------------------- field readers

def _int(body: dict, name: str, low: int = 0, high: int = 2**62, *, default: int | None = None) -> int:
    value = body.get(name)
    if value is None and default is not None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise v.InvalidRequest(f"`{name}` must be a whole number from {low} to {high}")
    return value


def _optional_int(body: dict, name: str, low: int = 0, high: int = 2**62) -> int | None:
    return None if body.get(name) is None else _int(body, name, low, high)


def _odds_ppb(body: dict) -> int | None:
    """Odds per round as a decimal probability string ("0.0001"), kept exact."""
    value = body.get("odds")
    if value is None:
        return None
    if not isinstance(value, str):
        raise v.InvalidRequest("`odds` must be a decimal probability written as a string, e.g. \"0.0001\"")
    try:
        return ppb_from_decimal(value)
    except ValueError as exc:
        raise v.InvalidRequest(str(exc)) from None


def _brand_ids(body: dict) -> tuple[str, ...]:
    brands = body.get("brand_ids")
    if not isinstance(brands, list) or not 1 <= len(brands) <= MAX_BRANDS:
        raise v.InvalidRequest(f"`brand_ids` must be a list of 1 to {MAX_BRANDS} brand ids")
    return tuple(v.ident({"brand_id": b}, "brand_id") for b in brands)


def _money(body: dict, name: str, *, required: bool = True) -> tuple[int, str] | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, dict):
        raise v.InvalidRequest(f"`{name}` must be an object of amount and currency")
    v.no_unknown_fields(value, {"amount", "currency"})
    return v.amount(value, "amount"), v.currency(value)


def _name(body: dict) -> str | None:
    value = body.get("name")
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 80 or not value.isprintable():
        raise v.InvalidRequest("`name` must be at most 80 printable characters")
    return value


def _deadline_ms(body: dict) -> int | None:
    seconds = _optional_int(body, "deadline", 1, 2**40)
    return None if seconds is None else seconds * 1000


def _period_ms(body: dict) -> int | None:
    seconds = _optional_int(body, "period_s", 1, 10 * 366 * 86_400)
    return None if seconds is None else seconds * 1000


_TIER_FIELDS = {"name", "seed_amount", "cap", "share_bps", "odds", "drop_min", "drop_max"}


def _tier_config(entry: object) -> jp.TierConfig:
    if not isinstance(entry, dict):
        raise v.InvalidRequest("each tier is an object")
    v.no_unknown_fields(entry, _TIER_FIELDS)
    name = entry.get("name")
    if not isinstance(name, str):
        raise v.InvalidRequest("each tier needs a `name`")
    return jp.TierConfig(
        name=name, seed_minor=_int(entry, "seed_amount", default=0), cap_minor=_optional_int(entry, "cap", 1),
        share_bps=_int(entry, "share_bps", 0, jp.BPS), odds_ppb=_odds_ppb(entry) or 0,
        drop_min_minor=_int(entry, "drop_min", default=0), drop_max_minor=_int(entry, "drop_max", default=0),
    )


def _tier_patch(entry: object) -> jp.TierPatch:
    if not isinstance(entry, dict):
        raise v.InvalidRequest("each tier is an object")
    v.no_unknown_fields(entry, _TIER_FIELDS)
    name = entry.get("name")
    if not isinstance(name, str):
        raise v.InvalidRequest("each tier change names its tier")
    return jp.TierPatch(
        name=name, seed_minor=_optional_int(entry, "seed_amount"), cap_minor=_optional_int(entry, "cap", 1),
        remove_cap="cap" in entry and entry["cap"] is None, share_bps=_optional_int(entry, "share_bps", 0, jp.BPS),
        odds_ppb=_odds_ppb(entry), drop_min_minor=_optional_int(entry, "drop_min"),
        drop_max_minor=_optional_int(entry, "drop_max"),
    )


def _tiers(body: dict, read) -> tuple:  # type: ignore[no-untyped-def]
    tiers = body.get("tiers")
    if tiers is None:
        return ()
    if not isinstance(tiers, list) or not 1 <= len(tiers) <= MAX_TIERS:
        raise v.InvalidRequest(f"`tiers` must be a list of 1 to {MAX_TIERS} tiers")
    return tuple(read(t) for t in tiers)


# ---------------------------------------------------------------- admin

_POOL_FIELDS = {"pool_id", "kind", "brand_ids", "region", "currency", "seed_amount", "cap", "contribution_bps",
                "tiers", "drop_min", "drop_max", "deadline", "period_s", "odds", "min_bet", "name"}


async def create_pool(request: web.Request) -> web.Response:
    body = await body_of(request, _POOL_FIELDS)
    pool_id = v.ident(body, "pool_id")
    command = jp.CreatePool(
        pool_id=pool_id, kind=v.one_of(body, "kind", jp.POOL_KINDS), brand_ids=_brand_ids(body),
        region=v.ident(body, "region"), currency=v.currency(body),
        server_seed_hash="",  # the agent derives the pool's seed and fills in its commitment
        seed_minor=_int(body, "seed_amount", default=0), cap_minor=_optional_int(body, "cap", 1),
        contribution_bps=_int(body, "contribution_bps", 0, jp.BPS, default=0), tiers=_tiers(body, _tier_config),
        drop_min_minor=_int(body, "drop_min", default=0), drop_max_minor=_int(body, "drop_max", default=0),
        deadline_ms=_deadline_ms(body) or 0, period_ms=_period_ms(body) or 0, odds_ppb=_odds_ppb(body) or 0,
        min_bet_minor=_int(body, "min_bet", 1, default=1), name=_name(body) or "",
    )
    return await send_command(request, pool_id, command)


_PATCH_FIELDS = {"brand_ids", "region", "contribution_bps", "tiers", "deadline", "period_s", "min_bet", "status",
                 "name", "reason", "change_id"}


async def reconfigure_pool(request: web.Request) -> web.Response:
    pool_id = v.ident(dict(request.match_info), "pool_id")
    body = await body_of(request, _PATCH_FIELDS)
    command = jp.Reconfigure(
        brand_ids=_brand_ids(body) if "brand_ids" in body else None,
        region=v.ident(body, "region", required=False),
        contribution_bps=_optional_int(body, "contribution_bps", 0, jp.BPS),
        tiers=_tiers(body, _tier_patch),
        deadline_ms=_deadline_ms(body), period_ms=_period_ms(body), min_bet_minor=_optional_int(body, "min_bet", 1),
        status=v.one_of(body, "status", (jp.OPEN, jp.CLOSED)) if "status" in body else None,
        name=_name(body), reason=v.text(body, "reason", max_len=500),
    )
    # A change names itself so a retry after a timeout is not applied twice; without a
    # change_id an identical PATCH leaves the pool as it is anyway.
    change_id = v.ident(body, "change_id", required=False)
    return await send_command(request, pool_id, command, f"config:{change_id}" if change_id else "")


async def retry_payout(request: web.Request) -> web.Response:
    match = dict(request.match_info)
    pool_id, trigger_id = v.ident(match, "pool_id"), v.ident(match, "trigger_id")
    await body_of(request, set())
    return await send_command(request, pool_id, jp.RetryPayout(trigger_id))


# ---------------------------------------------------------------- game side

async def contribute(request: web.Request) -> web.Response:
    body = await body_of(request, {"contribution_id", "brand_id", "pool_id", "round_id", "player_id", "bet",
                                   "contribution", "region"})
    bet_minor, bet_currency = _money(body, "bet")  # type: ignore[misc]
    explicit = _money(body, "contribution", required=False)
    if str(body.get("contribution_id", "")).startswith(ROUND_CONTRIBUTION_PREFIX):
        raise v.InvalidRequest(f"`contribution_id` must not begin with {ROUND_CONTRIBUTION_PREFIX!r}: "
                               "those are the contributions game rounds carry")
    command = jp.Contribute(
        contribution_id=v.ident(body, "contribution_id"), brand_id=v.ident(body, "brand_id"),
        region=v.ident(body, "region", required=False) or "", round_id=v.ident(body, "round_id"),
        player_id=v.ident(body, "player_id"), bet_minor=bet_minor, currency=bet_currency,
        contribution_minor=None if explicit is None else explicit[0],
        contribution_currency="" if explicit is None else explicit[1],
    )
    return await send_command(request, v.ident(body, "pool_id"), command)


async def candidates(request: web.Request) -> web.Response:
    body = await body_of(request, {"pool_id", "brand_id", "region", "bet", "player_id"})
    bet_minor, bet_currency = _money(body, "bet")  # type: ignore[misc]
    command = jp.CheckCandidate(
        brand_id=v.ident(body, "brand_id"), region=v.ident(body, "region", required=False) or "",
        currency=bet_currency, bet_minor=bet_minor, player_id=v.ident(body, "player_id", required=False) or "",
    )
    return await send_command(request, v.ident(body, "pool_id"), command)


async def trigger(request: web.Request) -> web.Response:
    body = await body_of(request, {"trigger_id", "pool_id", "reason", "selection", "tier", "brand_id", "region"})
    selection = body.get("selection")
    if not isinstance(selection, dict):
        raise v.InvalidRequest("`selection` must be an object of player_id and round_id")
    v.no_unknown_fields(selection, {"player_id", "round_id"})
    command = jp.Trigger(
        trigger_id=v.ident(body, "trigger_id"), player_id=v.ident(selection, "player_id"),
        round_id=v.ident(selection, "round_id"), brand_id=v.ident(body, "brand_id", required=False) or "",
        region=v.ident(body, "region", required=False) or "", tier=v.ident(body, "tier", required=False) or "",
        reason=v.text(body, "reason", max_len=200),
    )
    return await send_command(request, v.ident(body, "pool_id"), command)


# ---------------------------------------------------------------- reads

async def get_pool(request: web.Request) -> web.Response:
    pool_id = v.ident(dict(request.match_info), "pool_id")
    cached = await services(request).pool_cache.get(request["tenant_id"], pool_id)
    if cached is not None:
        return json_response(200, json.loads(cached))
    return result_response(*await dispatch_pool(request, pool_id, READ_POOL, {}))


async def list_pools(request: web.Request) -> web.Response:
    query = dict(request.query)
    v.no_unknown_fields(query, {"brand_id", "region", "kind", "status"})
    brand_id = v.ident(query, "brand_id", required=False)
    region = v.ident(query, "region", required=False)
    kind = v.one_of(query, "kind", jp.POOL_KINDS) if "kind" in query else None
    status = v.one_of(query, "status", (jp.OPEN, jp.CLOSED)) if "status" in query else None
    pools = []
    for raw in await services(request).pool_cache.list(request["tenant_id"]):
        pool = json.loads(raw)
        if ((brand_id is None or brand_id in pool["brand_ids"]) and (region is None or pool["region"] == region)
                and (kind is None or pool["kind"] == kind) and (status is None or pool["status"] == status)):
            pools.append(pool)
    return json_response(200, {"pools": pools})


def add_jackpot_routes(app: web.Application) -> None:
    app.router.add_post("/v1/jp/contributions", contribute)
    app.router.add_post("/v1/jp/candidates", candidates)
    app.router.add_post("/v1/jp/triggers", trigger)
    app.router.add_get("/v1/jp/pools", list_pools)
    app.router.add_post("/v1/jp/pools", create_pool)
    app.router.add_get("/v1/jp/pools/{pool_id}", get_pool)
    app.router.add_patch("/v1/jp/pools/{pool_id}", reconfigure_pool)
    app.router.add_post("/v1/jp/pools/{pool_id}/payouts/{trigger_id}/retry", retry_payout)
