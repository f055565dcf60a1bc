"""One table from result code to HTTP status: the only place statuses are chosen."""
from __future__ import annotations

import json

from aiohttp import web

from app.api.signing import AuthResult
from app.domain.jackpot.core import JackpotResult
from app.domain.wallet.core import WalletResult

STATUS: dict[str, int] = {
    WalletResult.CREATED: 201,
    WalletResult.ACCEPTED: 202,
    WalletResult.OK: 200,
    WalletResult.PLAYER_NOT_FOUND: 404,
    WalletResult.PLAYER_EXISTS_WITH_DIFFERENT_DETAILS: 409,
    WalletResult.CURRENCY_NOT_SUPPORTED: 422,
    WalletResult.IDEMPOTENCY_CONFLICT: 409,
    WalletResult.OPERATION_ALREADY_APPLIED: 409,
    WalletResult.DEPOSIT_EXISTS: 409,
    WalletResult.DEPOSIT_NOT_FOUND: 404,
    WalletResult.DEPOSIT_ALREADY_FINAL: 409,
    WalletResult.AMOUNT_MISMATCH: 422,
    WalletResult.FEE_EXCEEDS_AMOUNT: 422,
    WalletResult.INSUFFICIENT_FUNDS: 422,
    WalletResult.POLICY_NOT_FOUND: 422,
    WalletResult.BET_EXISTS: 409,
    WalletResult.BET_NOT_FOUND: 404,
    WalletResult.BET_ALREADY_SETTLED: 409,
    WalletResult.HOLD_NOT_FOUND: 404,
    WalletResult.HOLD_NOT_OPEN: 409,
    WalletResult.CAPTURE_EXCEEDS_HOLD: 422,
    WalletResult.INVALID_PAYOUT: 422,
    WalletResult.WITHDRAWAL_EXISTS: 409,
    WalletResult.WITHDRAWAL_NOT_FOUND: 404,
    WalletResult.WITHDRAWAL_ALREADY_FINAL: 409,
    WalletResult.BONUS_EXISTS: 409,
    WalletResult.CONVERSION_EXISTS: 409,
    WalletResult.ADJUSTMENT_EXISTS: 409,
    WalletResult.SAME_CURRENCY: 422,
    WalletResult.INVALID_RATE: 422,
    WalletResult.AMOUNT_TOO_SMALL: 422,
    WalletResult.CANNOT_SHORTEN_EXCLUSION: 409,
    WalletResult.DEPOSIT_LIMIT_EXCEEDED: 403,
    WalletResult.BET_LIMIT_EXCEEDED: 403,
    WalletResult.LOSS_LIMIT_EXCEEDED: 403,
    WalletResult.SESSION_LIMIT_EXCEEDED: 403,
    WalletResult.COOL_OFF_ACTIVE: 403,
    WalletResult.SELF_EXCLUDED: 403,
    WalletResult.KYC_REQUIRED: 403,
    WalletResult.AML_HOLD: 403,
    WalletResult.VELOCITY_LIMIT_EXCEEDED: 429,
    WalletResult.DESTINATION_BLOCKED: 403,
    JackpotResult.OPERATION_ALREADY_APPLIED: 409,
    JackpotResult.POOL_EXISTS: 409,
    JackpotResult.POOL_NOT_FOUND: 404,
    JackpotResult.INVALID_CONFIG: 422,
    JackpotResult.CURRENCY_MISMATCH: 422,
    JackpotResult.BRAND_NOT_IN_POOL: 422,
    JackpotResult.REGION_NOT_IN_POOL: 422,
    JackpotResult.INVALID_CONTRIBUTION: 422,
    JackpotResult.BET_BELOW_MINIMUM: 422,
    JackpotResult.POOL_CLOSED: 409,
    JackpotResult.TIER_NOT_FOUND: 404,
    JackpotResult.INVALID_TRIGGER: 422,
    JackpotResult.TRIGGER_NOT_ALLOWED: 409,
    JackpotResult.TRIGGER_EXISTS: 409,
    JackpotResult.POOL_EMPTY: 409,
    JackpotResult.PAYOUT_NOT_FOUND: 404,
    JackpotResult.PAYOUT_ALREADY_CREDITED: 409,
    JackpotResult.PAYOUT_NOT_FAILED: 409,
    JackpotResult.STALE_PAYOUT_MESSAGE: 409,
    # The engine's seed does not match the pool's commitment: JACKPOT_SEED_SECRET changed
    # under a running pool. Nothing the caller can fix.
    JackpotResult.SERVER_SEED_MISMATCH: 500,
    "fx_rate_not_found": 422,
    AuthResult.MISSING_SIGNATURE: 401,
    AuthResult.UNKNOWN_API_KEY: 401,
    AuthResult.STALE_TIMESTAMP: 401,
    AuthResult.INVALID_SIGNATURE: 401,
    AuthResult.REPLAYED_SIGNATURE: 401,
    "invalid_request": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    "timeout": 504,
    "unavailable": 503,
    "internal_error": 500,
}


def json_response(status: int, body: dict) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body, separators=(",", ":"), sort_keys=True).encode(),
        content_type="application/json",
    )


def error(code: str, message: str) -> web.Response:
    return json_response(STATUS[code], {"error": {"code": str(code), "message": message}})


def result_response(code: str, body: dict) -> web.Response:
    return json_response(STATUS[code], body)
