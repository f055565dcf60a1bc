"""Money handlers of the HTTP API. Each validates its body, turns it into a command for
the agent that owns the player, and maps the agent's result code to a status. They
decide nothing about money.

Requests that name only a bet, withdrawal or hold (settle, cancel, capture, PSP
webhooks) find the owning player through the route index in PostgreSQL. A route is
written only after the agent accepted the operation and before the client hears so,
so every later request that names the operation finds it."""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from decimal import Decimal, InvalidOperation

from aiohttp import web

from app.api import validation as v
from app.api.errors import error, json_response, result_response
from app.api.signing import AuthResult, check_psp
from app.domain.wallet import core as w
from app.domain.wallet.calendar import PERIODS
from app.domain.wallet.policies import DEFAULT_POLICY, SPEND_POLICIES
from app.messages import COMMAND_NAMES, READ_LIMITS, READ_WALLET, READ_WITHDRAWAL, request_hash, wallet_key

SERVICES = web.AppKey("services", object)
SETTINGS = web.AppKey("settings", object)

MAX_HISTORY_PAGE = 500


def services(request: web.Request):  # type: ignore[no-untyped-def]
    return request.app[SERVICES]


def now_ms() -> int:
    return int(time.time() * 1000)


async def body_of(request: web.Request, allowed: set[str]) -> dict:
    body = v.parse_json_object(await request.read())
    v.no_unknown_fields(body, allowed)
    return body


async def dispatch(request: web.Request, tenant_id: str, player_id: str, command: object, operation_key: str,
                   meaning: dict) -> tuple[str, dict]:
    return await services(request).bus.request(
        wallet_key(tenant_id, player_id),
        {"tenant_id": tenant_id, "operation_key": operation_key, "request_hash": request_hash(meaning),
         "now_ms": now_ms()},
        COMMAND_NAMES[type(command)],
        asdict(command),  # type: ignore[call-overload]
    )


async def read(request: web.Request, tenant_id: str, player_id: str, kind: str, payload: dict) -> tuple[str, dict]:
    return await services(request).bus.request(
        wallet_key(tenant_id, player_id),
        {"tenant_id": tenant_id, "operation_key": "", "request_hash": "", "now_ms": now_ms()},
        kind,
        payload,
    )


async def owner_of(request: web.Request, tenant_id: str, route: str, missing: str, what: str) -> str:
    player_id = await services(request).routes.lookup(tenant_id, route)
    if player_id is None:
        raise NotFound(missing, f"no such {what}")
    return player_id


async def dispatch_routed(request: web.Request, player_id: str, route: str, command: object, operation_key: str,
                          meaning: dict) -> web.Response:
    """Dispatch a command that opens an operation later requests name by id alone (a
    deposit, a bet, a withdrawal). The agent refuses an id another player owns (its
    `*_exists` code) and records the route in the commit that accepts the operation, so
    the route is there before the client hears of it, and this process remembers it."""
    tenant_id = request["tenant_id"]
    code, reply = await dispatch(request, tenant_id, player_id, command, operation_key, meaning)
    if code in ACCEPTED_CODES:
        services(request).routes.remember(tenant_id, route, player_id)
    return result_response(code, reply)


ACCEPTED_CODES = frozenset({"ok", "created", "accepted"})


class NotFound(Exception):
    """The route index knows no such operation; answered with its code as a 404."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- players

async def create_player(request: web.Request) -> web.Response:
    body = await body_of(request, {"player_id", "currency", "country"})
    command = w.CreatePlayer(player_id=v.ident(body, "player_id"), currency=v.currency(body), country=v.country(body))
    code, reply = await dispatch(request, request["tenant_id"], command.player_id, command,
                                 f"player:{command.player_id}", body)
    return result_response(code, reply)


def _limit_amounts(body: dict) -> tuple[tuple[str, str, int | None], ...]:
    amounts = []
    for kind in w.LIMIT_KINDS:
        per = body.get(kind)
        if per is None:
            continue
        if not isinstance(per, dict) or set(per) - set(PERIODS):
            raise v.InvalidRequest(f"`{kind}` must be an object of day, week and month limits")
        for period, value in per.items():
            amounts.append((kind, period, None if value is None else v.amount(per, period, allow_zero=True)))
    return tuple(amounts)


def _optional_until_ms(body: dict, name: str) -> int:
    if body.get(name) is None:
        return 0
    value = body[name]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise v.InvalidRequest(f"`{name}` must be a unix time in seconds")
    return value * 1000


async def set_limits(request: web.Request) -> web.Response:
    player_id = v.ident(dict(request.match_info), "player_id")
    body = await body_of(request, {*w.LIMIT_KINDS, "session_minutes", "cool_off_until", "self_exclusion_until"})
    session = body.get("session_minutes")
    if session is not None and not (isinstance(session, int) and not isinstance(session, bool) and session > 0):
        raise v.InvalidRequest("`session_minutes` must be a positive whole number of minutes or null")
    command = w.SetLimits(
        amounts=_limit_amounts(body),
        session_minutes=session,
        clear_session="session_minutes" in body and session is None,
        cool_off_until_ms=_optional_until_ms(body, "cool_off_until"),
        self_excluded_until_ms=_optional_until_ms(body, "self_exclusion_until"),
    )
    # Setting limits is idempotent by nature (the same request leaves the same limits),
    # so it carries no idempotency key and every call is applied.
    code, reply = await dispatch(request, request["tenant_id"], player_id, command, "", body)
    return result_response(code, reply)


async def get_limits(request: web.Request) -> web.Response:
    player_id = v.ident(dict(request.match_info), "player_id")
    return result_response(*await read(request, request["tenant_id"], player_id, READ_LIMITS, {}))


async def set_status(request: web.Request) -> web.Response:
    player_id = v.ident(dict(request.match_info), "player_id")
    body = await body_of(request, {"kyc_status", "aml_hold"})
    aml_hold = body.get("aml_hold", False)
    if not isinstance(aml_hold, bool):
        raise v.InvalidRequest("`aml_hold` must be true or false")
    command = w.SetPlayerStatus(v.one_of(body, "kyc_status", ("PENDING", "VERIFIED", "REJECTED")), aml_hold)
    code, reply = await dispatch(request, request["tenant_id"], player_id, command, "", body)
    return result_response(code, reply)


# ---------------------------------------------------------------- deposits and PSP webhooks

async def create_deposit(request: web.Request) -> web.Response:
    body = await body_of(request, {"deposit_id", "player_id", "amount", "currency", "method", "idempotency_key"})
    command = w.RequestDeposit(
        deposit_id=v.ident(body, "deposit_id"),
        player_id=v.ident(body, "player_id"),
        amount_minor=v.amount(body, "amount"),
        currency=v.currency(body),
        method=v.text(body, "method"),
    )
    idempotency_key = v.ident(body, "idempotency_key", required=False) or command.deposit_id
    return await dispatch_routed(request, command.player_id, f"deposit:{command.deposit_id}", command,
                                 f"deposit:{idempotency_key}", body)


async def psp_webhook(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    psp = settings.psp(request.match_info["psp"])
    if psp is None:
        return error("not_found", "no such PSP")
    raw = await request.read()
    if not check_psp(psp.secret, raw, request.headers.get("X-PSP-Signature")):
        return error(AuthResult.INVALID_SIGNATURE, "the PSP signature was not accepted")
    body = v.parse_json_object(raw)
    v.no_unknown_fields(body, {"event_id", "deposit_id", "withdrawal_id", "status", "amount", "currency", "fee"})
    if ("deposit_id" in body) == ("withdrawal_id" in body):
        raise v.InvalidRequest("a webhook names exactly one of `deposit_id` and `withdrawal_id`")
    fields = dict(
        psp=psp.name,
        event_id=v.ident(body, "event_id"),
        status=v.one_of(body, "status", ("SUCCEEDED", "FAILED")),
        amount_minor=v.amount(body, "amount"),
        currency=v.currency(body),
        fee_minor=v.amount(body, "fee", allow_zero=True) if "fee" in body else 0,
    )
    command: object
    if "deposit_id" in body:
        command = w.ApplyPspResult(deposit_id=v.ident(body, "deposit_id"), **fields)
        route, missing, what = f"deposit:{command.deposit_id}", "deposit_not_found", "deposit"
    else:
        command = w.ApplyWithdrawalResult(withdrawal_id=v.ident(body, "withdrawal_id"), **fields)
        route, missing, what = f"withdrawal:{command.withdrawal_id}", "withdrawal_not_found", "withdrawal"
    player_id = await owner_of(request, psp.tenant_id, route, missing, what)
    code, reply = await dispatch(request, psp.tenant_id, player_id, command, f"psp:{psp.name}:{fields['event_id']}",
                                 body)
    return result_response(code, reply)


# ---------------------------------------------------------------- bets and holds

async def place_bet(request: web.Request) -> web.Response:
    body = await body_of(request, {"bet_id", "player_id", "amount", "currency", "source_policy", "provider",
                                   "idempotency_key"})
    policy = body.get("source_policy", DEFAULT_POLICY)
    if policy not in SPEND_POLICIES:
        return error("policy_not_found", f"no spend policy {policy!r}; known: {', '.join(SPEND_POLICIES)}")
    command = w.PlaceBet(
        bet_id=v.ident(body, "bet_id"),
        amount_minor=v.amount(body, "amount"),
        currency=v.currency(body),
        policy=policy,
        provider=v.ident(body, "provider", required=False) or "house",
    )
    key = v.ident(body, "idempotency_key", required=False) or command.bet_id
    return await dispatch_routed(request, v.ident(body, "player_id"), f"bet:{command.bet_id}", command, f"bet:{key}",
                                 body)


async def _bet_action(request: web.Request, command: object, bet_id: str, action: str, body: dict) -> web.Response:
    tenant_id = request["tenant_id"]
    player_id = await owner_of(request, tenant_id, f"bet:{bet_id}", "bet_not_found", "bet")
    code, reply = await dispatch(request, tenant_id, player_id, command, f"{action}:{bet_id}", body)
    return result_response(code, reply)


async def settle_bet(request: web.Request) -> web.Response:
    body = await body_of(request, {"bet_id", "result", "payout"})
    result = v.one_of(body, "result", ("WIN", "LOSS"))
    payout = v.amount(body, "payout", allow_zero=True) if "payout" in body else 0
    command = w.SettleBet(bet_id=v.ident(body, "bet_id"), result=result, payout_minor=payout)
    return await _bet_action(request, command, command.bet_id, "settle", body)


async def cancel_bet(request: web.Request) -> web.Response:
    body = await body_of(request, {"bet_id"})
    command = w.CancelBet(bet_id=v.ident(body, "bet_id"))
    return await _bet_action(request, command, command.bet_id, "cancel", body)


async def capture_hold(request: web.Request) -> web.Response:
    hold_id = request.match_info["hold_id"]
    body = await body_of(request, {"amount", "idempotency_key"})
    command = w.CaptureHold(hold_id=hold_id, amount_minor=v.amount(body, "amount"))
    key = v.ident(body, "idempotency_key")
    tenant_id = request["tenant_id"]
    player_id = await owner_of(request, tenant_id, hold_id, "hold_not_found", "hold")
    code, reply = await dispatch(request, tenant_id, player_id, command, f"capture:{hold_id}:{key}", body)
    return result_response(code, reply)


async def release_hold(request: web.Request) -> web.Response:
    hold_id = request.match_info["hold_id"]
    body = await body_of(request, set())
    tenant_id = request["tenant_id"]
    player_id = await owner_of(request, tenant_id, hold_id, "hold_not_found", "hold")
    code, reply = await dispatch(request, tenant_id, player_id, w.ReleaseHold(hold_id), f"release:{hold_id}", body)
    return result_response(code, reply)


# ---------------------------------------------------------------- withdrawals

async def create_withdrawal(request: web.Request) -> web.Response:
    body = await body_of(request, {"withdrawal_id", "player_id", "amount", "currency", "method", "destination",
                                   "idempotency_key"})
    command = w.RequestWithdrawal(
        withdrawal_id=v.ident(body, "withdrawal_id"),
        amount_minor=v.amount(body, "amount"),
        currency=v.currency(body),
        method=v.text(body, "method"),
        destination=v.text(body, "destination", max_len=128) if "destination" in body else "",
    )
    key = v.ident(body, "idempotency_key", required=False) or command.withdrawal_id
    return await dispatch_routed(request, v.ident(body, "player_id"), f"withdrawal:{command.withdrawal_id}", command,
                                 f"withdrawal:{key}", body)


async def get_withdrawal(request: web.Request) -> web.Response:
    withdrawal_id = v.ident(dict(request.match_info), "withdrawal_id")
    tenant_id = request["tenant_id"]
    player_id = await owner_of(request, tenant_id, f"withdrawal:{withdrawal_id}", "withdrawal_not_found",
                                   "withdrawal")
    return result_response(*await read(request, tenant_id, player_id, READ_WITHDRAWAL,
                                       {"withdrawal_id": withdrawal_id}))


# ---------------------------------------------------------------- bonuses, FX, adjustments

async def grant_bonus(request: web.Request) -> web.Response:
    body = await body_of(request, {"bonus_id", "player_id", "amount", "currency", "wager_required", "expires_at",
                                   "idempotency_key"})
    expires_at_ms = _optional_until_ms(body, "expires_at")
    if not expires_at_ms:
        raise v.InvalidRequest("`expires_at` (unix seconds) is required")
    command = w.GrantBonus(
        bonus_id=v.ident(body, "bonus_id"),
        amount_minor=v.amount(body, "amount"),
        currency=v.currency(body),
        wager_required_minor=v.amount(body, "wager_required", allow_zero=True),
        expires_at_ms=expires_at_ms,
    )
    key = v.ident(body, "idempotency_key", required=False) or command.bonus_id
    code, reply = await dispatch(request, request["tenant_id"], v.ident(body, "player_id"), command,
                                 f"bonus:{key}", body)
    return result_response(code, reply)


async def add_fx_rate(request: web.Request) -> web.Response:
    body = await body_of(request, {"base", "quote", "rate", "valid_from"})
    base, quote = v.currency(body, "base"), v.currency(body, "quote")
    raw_rate = body.get("rate")
    try:
        # A string keeps every digit; JSON numbers would pass through binary floats.
        rate = Decimal(raw_rate) if isinstance(raw_rate, str) else Decimal("NaN")
    except InvalidOperation:
        rate = Decimal("NaN")
    if not rate.is_finite() or rate <= 0:
        raise v.InvalidRequest("`rate` must be a positive decimal number written as a string, e.g. \"1.0873\"")
    valid_from_ms = _optional_until_ms(body, "valid_from") or now_ms()
    await services(request).fx_rates.add(base, quote, rate, valid_from_ms)
    return json_response(201, {"base": base, "quote": quote, "rate": str(rate), "valid_from_ms": valid_from_ms})


async def convert_fx(request: web.Request) -> web.Response:
    body = await body_of(request, {"conversion_id", "player_id", "from_currency", "to_currency", "amount", "wallet",
                                   "idempotency_key"})
    from_currency, to_currency = v.currency(body, "from_currency"), v.currency(body, "to_currency")
    conversion_id, player_id = v.ident(body, "conversion_id"), v.ident(body, "player_id")
    wallet = v.one_of(body, "wallet", w.PLAYER_WALLETS) if "wallet" in body else "CASH"
    amount_minor = v.amount(body, "amount")
    key = v.ident(body, "idempotency_key", required=False) or conversion_id
    found = await services(request).fx_rates.rate_at(from_currency, to_currency, now_ms())
    if found is None:
        return error("fx_rate_not_found", f"no {from_currency}/{to_currency} rate is in force")
    rate, valid_from_ms = found
    command = w.ConvertFx(conversion_id=conversion_id, wallet=wallet, from_currency=from_currency,
                          to_currency=to_currency, amount_minor=amount_minor, rate=str(rate),
                          rate_valid_from_ms=valid_from_ms)
    code, reply = await dispatch(request, request["tenant_id"], player_id, command, f"fx:{key}", body)
    return result_response(code, reply)


async def adjust(request: web.Request) -> web.Response:
    body = await body_of(request, {"adjustment_id", "player_id", "wallet", "currency", "amount", "reason",
                                   "idempotency_key"})
    signed = body.get("amount")
    if not isinstance(signed, int) or isinstance(signed, bool) or signed == 0 or abs(signed) > 10**15:
        raise v.InvalidRequest("`amount` must be a non-zero integer number of minor units (negative debits)")
    command = w.Adjust(
        adjustment_id=v.ident(body, "adjustment_id"),
        wallet=v.one_of(body, "wallet", w.PLAYER_WALLETS),
        currency=v.currency(body),
        amount_minor=signed,
        reason=v.text(body, "reason", max_len=500),
    )
    key = v.ident(body, "idempotency_key", required=False) or command.adjustment_id
    code, reply = await dispatch(request, request["tenant_id"], v.ident(body, "player_id"), command,
                                 f"adjustment:{key}", body)
    return result_response(code, reply)


# ---------------------------------------------------------------- reads

async def get_wallets(request: web.Request) -> web.Response:
    player_id = v.ident(dict(request.query), "player_id")
    types = v.wallet_types(request.query.get("types"), w.PLAYER_WALLETS)
    tenant_id = request["tenant_id"]
    cached = await services(request).cache.get(tenant_id, player_id)
    if cached is not None:
        code, body = "ok", json.loads(cached)
    else:
        code, body = await read(request, tenant_id, player_id, READ_WALLET, {})
    if code == "ok" and types:
        body = {**body, "wallets": [x for x in body["wallets"] if x["type"] in types]}
    return result_response(code, body)


def _page_limit(request: web.Request, default: int = 50) -> int:
    raw = request.query.get("limit", str(default))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_HISTORY_PAGE:
        raise v.InvalidRequest(f"`limit` must be a whole number from 1 to {MAX_HISTORY_PAGE}")
    return int(raw)


async def get_postings(request: web.Request) -> web.Response:
    player_id = v.ident(dict(request.match_info), "player_id")
    limit = _page_limit(request)
    try:
        entries, cursor = await services(request).ledger.history(request["tenant_id"], player_id,
                                                                 request.query.get("cursor"), limit)
    except ValueError:
        raise v.InvalidRequest("`cursor` is not one this API returned") from None
    return json_response(200, {"player_id": player_id, "postings": entries, "next_cursor": cursor})


async def get_audit(request: web.Request) -> web.Response:
    player_id = v.ident(dict(request.match_info), "player_id")
    records = await services(request).ledger.audit(request["tenant_id"], player_id, _page_limit(request))
    return json_response(200, {"player_id": player_id, "audit": [
        {"audit_id": r.audit_id, "kind": r.kind, "code": r.code, "created_at_ms": r.created_at_ms,
         "detail": r.detail} for r in records]})
