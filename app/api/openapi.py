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
            "/v1/players": {"post": _op(
                "Create a player and its wallets (a repeat is idempotent)",
                {"201": "created", **_AUTH_FAIL, "409": "player_exists_with_different_details"},
                body=_obj(["player_id", "currency", "country"], player_id=_ID, currency=_CURRENCY,
                          country={"type": "string", "pattern": "^[A-Z]{2}$"}),
            )},
            "/v1/deposits": {"post": _op(
                "Register a deposit; the PSP webhook settles it",
                {"202": "PENDING", **_AUTH_FAIL, "404": "player_not_found", "409": "deposit_exists or idempotency_conflict",
                 "422": "currency_not_supported", "504": "timeout (retry with the same key)"},
                body=_obj(["deposit_id", "player_id", "amount", "currency", "method"], deposit_id=_ID, player_id=_ID,
                          amount=_AMOUNT, currency=_CURRENCY, method={"type": "string", "maxLength": 64},
                          idempotency_key=_ID),
            )},
            "/v1/psp/{psp}/webhooks": {"post": _op(
                "PSP result for a deposit (signed with X-PSP-Signature, deduplicated by event_id)",
                {"200": "applied", "400": "invalid request", "401": "invalid_signature", "404": "deposit_not_found",
                 "409": "deposit_already_final or idempotency_conflict", "422": "amount_mismatch or fee_exceeds_amount"},
                body=_obj(["event_id", "deposit_id", "status", "amount", "currency"], event_id=_ID, deposit_id=_ID,
                          withdrawal_id=_ID, status={"enum": ["SUCCEEDED", "FAILED"]}, amount=_AMOUNT,
                          currency=_CURRENCY, fee={"type": "integer", "minimum": 0}),
                signed=False,
                params=[{"name": "psp", "in": "path", "required": True, "schema": {"type": "string"}}],
            )},
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
