"""Request body checks. A bad body is answered 400 before anything is sent anywhere."""
from __future__ import annotations

import json
import re

from app.domain.money import is_amount_minor, is_currency

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


class InvalidRequest(ValueError):
    pass


def parse_json_object(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidRequest("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def ident(body: dict, name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not _ID.match(value):
        raise InvalidRequest(f"`{name}` must be 1-128 characters of letters, digits, '_', '.', ':' or '-'")
    return value


def amount(body: dict, name: str, *, allow_zero: bool = False) -> int:
    value = body.get(name)
    if not is_amount_minor(value, allow_zero=allow_zero):
        kind = "a non-negative" if allow_zero else "a positive"
        raise InvalidRequest(f"`{name}` must be {kind} integer number of minor units")
    return value


def currency(body: dict, name: str = "currency") -> str:
    value = body.get(name)
    if not is_currency(value):
        raise InvalidRequest(f"`{name}` must be an ISO 4217 code such as EUR")
    return value


def country(body: dict, name: str = "country") -> str:
    value = body.get(name)
    if not isinstance(value, str) or not _COUNTRY.match(value):
        raise InvalidRequest(f"`{name}` must be an ISO 3166 alpha-2 code such as DE")
    return value


def one_of(body: dict, name: str, choices: tuple[str, ...]) -> str:
    value = body.get(name)
    if value not in choices:
        raise InvalidRequest(f"`{name}` must be one of {', '.join(choices)}")
    return value


def text(body: dict, name: str, *, max_len: int = 64) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidRequest(f"`{name}` must be a non-empty string of at most {max_len} characters")
    return value


def no_unknown_fields(body: dict, allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(unknown)}")


def wallet_types(raw: str | None, allowed: tuple[str, ...]) -> tuple[str, ...] | None:
    if not raw:
        return None
    types = tuple(t.strip().upper() for t in raw.split(",") if t.strip())
    bad = [t for t in types if t not in allowed]
    if bad:
        raise InvalidRequest(f"unknown wallet types: {', '.join(bad)}")
    return types


