"""Service-to-service request signing (SPEC §1a) and PSP webhook signatures. Pure."""
from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum


class AuthResult(StrEnum):
    OK = "ok"
    MISSING_SIGNATURE = "missing_signature"
    UNKNOWN_API_KEY = "unknown_api_key"
    STALE_TIMESTAMP = "stale_timestamp"
    INVALID_SIGNATURE = "invalid_signature"
    REPLAYED_SIGNATURE = "replayed_signature"


def sign(secret: str, timestamp: str, method: str, path_with_query: str, body: bytes) -> str:
    message = f"{timestamp}\n{method.upper()}\n{path_with_query}\n".encode() + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def check_request(
    *,
    secret: str | None,
    timestamp: str | None,
    signature: str | None,
    method: str,
    path_with_query: str,
    body: bytes,
    now_s: int,
    max_skew_s: int,
) -> AuthResult:
    """Everything but the replay check, which needs storage."""
    if not timestamp or not signature:
        return AuthResult.MISSING_SIGNATURE
    if secret is None:
        return AuthResult.UNKNOWN_API_KEY
    try:
        ts = int(timestamp)
    except ValueError:
        return AuthResult.STALE_TIMESTAMP
    if abs(now_s - ts) > max_skew_s:
        return AuthResult.STALE_TIMESTAMP
    expected = sign(secret, timestamp, method, path_with_query, body)
    if not hmac.compare_digest(expected, signature.lower()):
        return AuthResult.INVALID_SIGNATURE
    return AuthResult.OK


def sign_psp(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def check_psp(secret: str, body: bytes, signature: str | None) -> bool:
    return bool(signature) and hmac.compare_digest(sign_psp(secret, body), signature.lower())
