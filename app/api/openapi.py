"""The OpenAPI document served at /openapi.json, built next to the routes it describes.
tests/unit/test_openapi.py checks that every route of the app is documented and back."""
from __future__ import annotations

_ERROR = {"$ref": "#/components/schemas/Error"}
_SIGNED = [{"ApiKey": [], "Timestamp": [], "Signature": []}]


def _op(summary: str, responses: dict[str, str], *, body: dict | None = None, signed: bool = True,
        params: list | None = None) -> dict:
    op: dict = {
        "summary": summary,
        "responses": {
            code: ({"description": text, "content": {"application/json": {"schema": _ERROR}}}
                   if code.startswith(("4", "5")) else {"description": text})
            for code, text in responses.items()
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    op["security"] = _SIGNED if signed else []
    return op


def _obj(required: list[str], **props: dict) -> dict:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


_ID = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:\\-]{0,127}$"}
_AMOUNT = {"type": "integer", "minimum": 1, "description": "minor units"}
_CURRENCY = {"type": "string", "pattern": "^[A-Z]{3}$"}
_AUTH_FAIL = {"401": "bad, stale or replayed signature", "400": "invalid request"}
_RG_FAIL = {"403": "responsible-gaming, KYC/AML or block-list refusal (audited)"}
_PERIODS = {"type": "object", "properties": {p: {"type": ["integer", "null"], "minimum": 0}
                                             for p in ("day", "week", "month")}, "additionalProperties": False}
_PLAYER = {"name": "player_id", "in": "path", "required": True, "schema": _ID}
_HOLD = {"name": "hold_id", "in": "path", "required": True, "schema": {"type": "string"}}

# The public jackpot widget (app/api/widget.py): unsigned, read-only, filtered per tenant.
_WIDGET_QUERY = [{"name": "tenant", "in": "query", "required": True, "schema": _ID},
                 {"name": "brand_id", "in": "query", "required": False, "schema": _ID},
                 {"name": "pool_id", "in": "query", "required": False, "schema": _ID}]
_WIDGET_PATHS = {
    "/jp/widget": {"get": _op("The live jackpot widget page (HTML); it reads its own query string",
                              {"200": "text/html", "400": "invalid request"}, signed=False, params=_WIDGET_QUERY)},
    "/jp/widget.js": {"get": _op("The widget's script", {"200": "text/javascript"}, signed=False)},
    "/jp/widget.css": {"get": _op("The widget's style sheet", {"200": "text/css"}, signed=False)},
    "/jp/widget/pools": {"get": _op(
        "Pool sizes as the widget shows them: {pools: [{pool_id, name, kind, status, currency, exponent, region, "
        "brand_ids, size, version, tiers: [{tier, size, last_winner}], deadline_ms (timed)}]}; sizes in minor units",
        {"200": "pools", "400": "invalid request", "503": "Redis unavailable"}, signed=False, params=_WIDGET_QUERY)},
    "/jp/widget/stream": {"get": _op(
        "Server-Sent Events: `pools` with the current list, then `pool` with each newer snapshot; "
        "a comment every 15 s", {"200": "text/event-stream", "400": "invalid request", "503": "Redis unavailable"},
        signed=False, params=_WIDGET_QUERY)},
}


# Jackpots (app/api/jackpot.py). Sizes and amounts are minor units of the pool's currency.
_POOL = {"name": "pool_id", "in": "path", "required": True, "schema": _ID}
_MONEY = _obj(["amount", "currency"], amount=_AMOUNT, currency=_CURRENCY)
_ODDS = {"type": "string", "example": "0.0001", "description": "probability per eligible round"}
_MINOR = {"type": "integer", "minimum": 0, "description": "minor units"}
_TIER = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    "name": {"type": "string", "pattern": "^[a-z0-9_]{1,32}$"}, "seed_amount": _MINOR,
    "cap": {"type": ["integer", "null"], "minimum": 1}, "share_bps": {"type": "integer", "minimum": 0,
                                                                     "maximum": 10000},
    "odds": _ODDS, "drop_min": _MINOR, "drop_max": _MINOR}}
_POOL_CONFIG = {
    "brand_ids": {"type": "array", "items": _ID, "minItems": 1}, "region": _ID,
    "contribution_bps": {"type": "integer", "minimum": 0, "maximum": 10000},
    "tiers": {"type": "array", "items": _TIER, "minItems": 1, "maxItems": 8},
    "deadline": {"type": "integer", "description": "unix seconds (timed pools)"},
    "period_s": {"type": "integer", "minimum": 1, "description": "seconds between deadlines (timed pools)"},
    "min_bet": _AMOUNT, "name": {"type": "string", "maxLength": 80},
}
_JP_FAIL = {**_AUTH_FAIL, "404": "pool_not_found, tier_not_found", "504": "timeout (retry with the same id)"}
_JACKPOT_PATHS = {
    "/v1/jp/contributions": {"post": _op(
        "Record a round's contribution (idempotent on contribution_id); may drop the pool; "
        "publishes jp.contribution.recorded",
        {"200": "amount per tier, reserve, sizes and wins", **_JP_FAIL,
         "409": "pool_closed or idempotency_conflict",
         "422": "brand_not_in_pool, region_not_in_pool, currency_mismatch, invalid_contribution, bet_below_minimum"},
        body=_obj(["contribution_id", "brand_id", "pool_id", "round_id", "player_id", "bet"],
                  contribution_id=_ID, brand_id=_ID, pool_id=_ID, round_id=_ID, player_id=_ID, region=_ID,
                  bet=_MONEY, contribution=_MONEY))},
    "/v1/jp/candidates": {"post": _op(
        "Would a round take part in the pool: {eligible, reason, odds, rules}",
        {"200": "eligibility", **_JP_FAIL},
        body=_obj(["pool_id", "brand_id", "bet"], pool_id=_ID, brand_id=_ID, region=_ID, bet=_MONEY,
                  player_id=_ID))},
    "/v1/jp/triggers": {"post": _op(
        "Record a win decided outside the engine; the payout saga credits the winner",
        {"201": "win with payout_key", **_JP_FAIL, "409": "trigger_exists, trigger_not_allowed, pool_empty, "
         "pool_closed", "422": "invalid_trigger, brand_not_in_pool, region_not_in_pool"},
        body=_obj(["trigger_id", "pool_id", "reason", "selection"], trigger_id=_ID, pool_id=_ID,
                  reason={"type": "string", "maxLength": 200}, tier={"type": "string"}, brand_id=_ID, region=_ID,
                  selection=_obj(["player_id", "round_id"], player_id=_ID, round_id=_ID)))},
    "/v1/jp/pools": {
        "post": _op(
            "Create a pool (admin; audited): fixed, progressive, multi_tier, must_drop or timed; "
            "several brand_ids make a network pool",
            {"201": "created with the seeded sizes", **_JP_FAIL, "409": "pool_exists", "422": "invalid_config"},
            body=_obj(["pool_id", "kind", "brand_ids", "region", "currency"], pool_id=_ID,
                      kind={"enum": ["fixed", "progressive", "multi_tier", "must_drop", "timed"]},
                      currency=_CURRENCY, seed_amount=_MINOR, cap=_AMOUNT, odds=_ODDS, drop_min=_MINOR,
                      drop_max=_MINOR, **_POOL_CONFIG)),
        "get": _op(
            "The tenant's pools, from the snapshots", {"200": "pools", **_AUTH_FAIL},
            params=[{"name": n, "in": "query", "required": False, "schema": _ID}
                    for n in ("brand_id", "region", "kind", "status")]),
    },
    "/v1/jp/pools/{pool_id}": {
        "get": _op("A pool: size, seed, cap, tiers, participants, drop range and commitment, deadline",
                   {"200": "pool", **_JP_FAIL}, params=[_POOL]),
        "patch": _op(
            "Reconfigure a pool (admin; appended to the pool's audit chain with the reason)",
            {"200": "new configuration", **_JP_FAIL, "409": "idempotency_conflict", "422": "invalid_config"},
            body=_obj(["reason"], reason={"type": "string", "maxLength": 500}, change_id=_ID,
                      status={"enum": ["open", "closed"]}, **_POOL_CONFIG),
            params=[_POOL]),
    },
    "/v1/jp/pools/{pool_id}/payouts/{trigger_id}/retry": {"post": _op(
        "Ask the wallet again for a failed payout (e.g. once an AML hold is lifted)",
        {"200": "requested again", **_JP_FAIL, "409": "payout_not_failed or payout_already_credited"},
        body={"type": "object", "additionalProperties": False},
        params=[_POOL, {"name": "trigger_id", "in": "path", "required": True, "schema": _ID}])},
}


def openapi_document() -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Bankroll", "version": "0.1.0",
                 "description": "Money core of an online casino. Amounts are integers in minor units."},
        "paths": {
            "/health": {"get": _op("Process is alive", {"200": "alive"}, signed=False)},
            "/ready": {"get": _op("Broker, PostgreSQL, Redis reachable and every partition owned",
                                  {"200": "ready", "503": "not ready"}, signed=False)},
            "/metrics": {"get": _op("Prometheus metrics", {"200": "text exposition format"}, signed=False)},
            "/openapi.json": {"get": _op("This document", {"200": "OpenAPI 3.1"}, signed=False)},
            **_WIDGET_PATHS,
            **_JACKPOT_PATHS,
            "/v1/players": {"post": _op(
                "Create a player and its wallets (a repeat is idempotent)",
                {"201": "created", **_AUTH_FAIL, "409": "player_exists_with_different_details"},
                body=_obj(["player_id", "currency", "country"], player_id=_ID, currency=_CURRENCY,
                          country={"type": "string", "pattern": "^[A-Z]{2}$"}),
            )},
            "/v1/deposits": {"post": _op(
                "Register a deposit; the PSP webhook settles it",
                {"202": "PENDING", **_AUTH_FAIL, **_RG_FAIL, "404": "player_not_found",
                 "409": "deposit_exists or idempotency_conflict", "422": "currency_not_supported",
                 "429": "velocity_limit_exceeded", "504": "timeout (retry with the same key)"},
                body=_obj(["deposit_id", "player_id", "amount", "currency", "method"], deposit_id=_ID, player_id=_ID,
                          amount=_AMOUNT, currency=_CURRENCY, method={"type": "string", "maxLength": 64},
                          idempotency_key=_ID),
            )},
            "/v1/psp/{psp}/webhooks": {"post": _op(
                "PSP result for a deposit or a withdrawal (signed with X-PSP-Signature, deduplicated by event_id)",
                {"200": "applied", "400": "invalid request", "401": "invalid_signature",
                 "404": "deposit_not_found or withdrawal_not_found",
                 "409": "already final or idempotency_conflict", "422": "amount_mismatch or fee_exceeds_amount"},
                body=_obj(["event_id", "status", "amount", "currency"], event_id=_ID, deposit_id=_ID,
                          withdrawal_id=_ID, status={"enum": ["SUCCEEDED", "FAILED"]}, amount=_AMOUNT,
                          currency=_CURRENCY, fee={"type": "integer", "minimum": 0}),
                signed=False,
                params=[{"name": "psp", "in": "path", "required": True, "schema": {"type": "string"}}],
            )},
            "/v1/players/{player_id}/limits": {
                "put": _op("Set responsible-gaming limits: lower at once, higher or removed after a cooling period",
                           {"200": "limits in force and pending", **_AUTH_FAIL, "404": "player_not_found",
                            "409": "cannot_shorten_exclusion"},
                           body={"type": "object", "properties": {
                               **{k: _PERIODS for k in ("deposit", "bet", "loss")},
                               "session_minutes": {"type": ["integer", "null"], "minimum": 1},
                               "cool_off_until": {"type": "integer", "description": "unix seconds"},
                               "self_exclusion_until": {"type": "integer", "description": "unix seconds"}},
                               "additionalProperties": False},
                           params=[_PLAYER]),
                "get": _op("Limits in force and pending", {"200": "limits", **_AUTH_FAIL, "404": "player_not_found"},
                           params=[_PLAYER]),
            },
            "/v1/players/{player_id}/kyc": {"put": _op(
                "Set KYC status and AML hold (audited)", {"200": "status", **_AUTH_FAIL, "404": "player_not_found"},
                body=_obj(["kyc_status"], kyc_status={"enum": ["PENDING", "VERIFIED", "REJECTED"]},
                          aml_hold={"type": "boolean"}), params=[_PLAYER])},
            "/v1/players/{player_id}/postings": {"get": _op(
                "The player's ledger legs, newest first, with a cursor",
                {"200": "postings and next_cursor", **_AUTH_FAIL},
                params=[_PLAYER, {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                     "maximum": 500}}])},
            "/v1/players/{player_id}/audit": {"get": _op(
                "Refusals and changes recorded for the player, newest first", {"200": "audit records", **_AUTH_FAIL},
                params=[_PLAYER, {"name": "limit", "in": "query", "schema": {"type": "integer"}}])},
            "/v1/bets/place": {"post": _op(
                "Hold a stake under a spend policy", {"201": "HELD with hold_id and expires_in", **_AUTH_FAIL,
                                                      **_RG_FAIL, "409": "bet_exists or idempotency_conflict",
                                                      "422": "insufficient_funds, policy_not_found"},
                body=_obj(["bet_id", "player_id", "amount", "currency"], bet_id=_ID, player_id=_ID, amount=_AMOUNT,
                          currency=_CURRENCY, source_policy={"enum": ["casino", "sports"]}, provider=_ID,
                          idempotency_key=_ID))},
            "/v1/bets/settle": {"post": _op(
                "Settle a bet: the stake goes to the provider, a win pays out",
                {"200": "SETTLED with cash_delta", **_AUTH_FAIL, "404": "bet_not_found",
                 "409": "bet_already_settled, hold_not_open", "422": "invalid_payout"},
                body=_obj(["bet_id", "result"], bet_id=_ID, result={"enum": ["WIN", "LOSS"]},
                          payout={"type": "integer", "minimum": 0}))},
            "/v1/bets/cancel": {"post": _op(
                "Cancel a bet: the hold returns to its sources", {"200": "CANCELLED", **_AUTH_FAIL,
                                                                  "404": "bet_not_found", "409": "bet_already_settled"},
                body=_obj(["bet_id"], bet_id=_ID))},
            "/v1/holds/{hold_id}/capture": {"post": _op(
                "Capture part or all of a hold (several captures allowed)",
                {"200": "captured and remaining", **_AUTH_FAIL, "404": "hold_not_found", "409": "hold_not_open",
                 "422": "capture_exceeds_hold"},
                body=_obj(["amount", "idempotency_key"], amount=_AMOUNT, idempotency_key=_ID), params=[_HOLD])},
            "/v1/holds/{hold_id}/release": {"post": _op(
                "Release what is left of a hold to its sources", {"200": "released", **_AUTH_FAIL,
                                                                  "404": "hold_not_found", "409": "hold_not_open"},
                body={"type": "object", "additionalProperties": False}, params=[_HOLD])},
            "/v1/withdrawals": {"post": _op(
                "Request a withdrawal: KYC/AML and anti-fraud checks, then a hold on cash",
                {"202": "PENDING with status_url", **_AUTH_FAIL, **_RG_FAIL, "409": "withdrawal_exists",
                 "422": "insufficient_funds", "429": "velocity_limit_exceeded"},
                body=_obj(["withdrawal_id", "player_id", "amount", "currency", "method"], withdrawal_id=_ID,
                          player_id=_ID, amount=_AMOUNT, currency=_CURRENCY, method={"type": "string"},
                          destination={"type": "string"}, idempotency_key=_ID))},
            "/v1/withdrawals/{withdrawal_id}": {"get": _op(
                "A withdrawal's state", {"200": "state", **_AUTH_FAIL, "404": "withdrawal_not_found"},
                params=[{"name": "withdrawal_id", "in": "path", "required": True, "schema": _ID}])},
            "/v1/bonuses": {"post": _op(
                "Grant a bonus with a wagering requirement", {"201": "ACTIVE", **_AUTH_FAIL, "409": "bonus_exists"},
                body=_obj(["bonus_id", "player_id", "amount", "currency", "wager_required", "expires_at"],
                          bonus_id=_ID, player_id=_ID, amount=_AMOUNT, currency=_CURRENCY,
                          wager_required={"type": "integer", "minimum": 0},
                          expires_at={"type": "integer", "description": "unix seconds"}, idempotency_key=_ID))},
            "/v1/fx/rates": {"post": _op(
                "Record an FX rate (major units, as a decimal string)", {"201": "recorded", **_AUTH_FAIL},
                body=_obj(["base", "quote", "rate"], base=_CURRENCY, quote=_CURRENCY,
                          rate={"type": "string", "example": "1.0873"},
                          valid_from={"type": "integer", "description": "unix seconds"}))},
            "/v1/fx/conversions": {"post": _op(
                "Convert between currencies through FX accounts, banker's rounding, residue reported",
                {"200": "debited, credited, rate, residue_minor", **_AUTH_FAIL, "409": "conversion_exists",
                 "422": "fx_rate_not_found, insufficient_funds, same_currency"},
                body=_obj(["conversion_id", "player_id", "from_currency", "to_currency", "amount"],
                          conversion_id=_ID, player_id=_ID, from_currency=_CURRENCY, to_currency=_CURRENCY,
                          amount=_AMOUNT, wallet={"type": "string"}, idempotency_key=_ID))},
            "/v1/adjustments": {"post": _op(
                "A reasoned correction posting (audited)", {"201": "posted", **_AUTH_FAIL,
                                                            "409": "adjustment_exists", "422": "insufficient_funds"},
                body=_obj(["adjustment_id", "player_id", "wallet", "currency", "amount", "reason"],
                          adjustment_id=_ID, player_id=_ID, wallet={"type": "string"}, currency=_CURRENCY,
                          amount={"type": "integer", "description": "signed minor units"},
                          reason={"type": "string"}, idempotency_key=_ID))},
            "/v1/wallets": {"get": _op(
                "A player's wallets, from the Redis snapshot or the owning agent",
                {"200": "wallets", **_AUTH_FAIL, "404": "player_not_found"},
                params=[{"name": "player_id", "in": "query", "required": True, "schema": _ID},
                        {"name": "types", "in": "query", "required": False,
                         "schema": {"type": "string", "example": "CASH,BONUS"}}],
            )},
        },
        "components": {
            "schemas": {"Error": _obj(["error"], error=_obj(["code", "message"], code={"type": "string"},
                                                            message={"type": "string"}))},
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-Api-Key"},
                "Timestamp": {"type": "apiKey", "in": "header", "name": "X-Timestamp"},
                "Signature": {"type": "apiKey", "in": "header", "name": "X-Signature",
                              "description": "hex HMAC-SHA256(secret, timestamp\\nMETHOD\\npath_with_query\\nbody)"},
            },
        },
    }
