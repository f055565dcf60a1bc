"""The request hash stored with every operation's answer, the same for every aggregate.

A hash names its version ("v1:" + hex), so a later change of canonical form can be told
apart from a different request. Version 1 is the SHA-256 of the request's meaning as
canonical JSON (sorted keys, no spaces, UTF-8): key order and spacing do not matter, and
a field added later with a default changes nothing as long as the meaning handed in
leaves defaults out (see `meaning_of`). Hashes stored before versions existed were the
bare hex of the same canonical JSON: `same_request` still accepts them."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

VERSION = "v1"


def canonical_json(meaning: Any) -> str:
    # default=repr keeps a malformed value (a float where an integer belongs) hashable;
    # the handler refuses it afterwards as a value.
    return json.dumps(meaning, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)


def _hex(meaning: Any) -> str:
    return hashlib.sha256(canonical_json(meaning).encode()).hexdigest()


def request_hash(meaning: Any) -> str:
    return f"{VERSION}:{_hex(meaning)}"


def same_request(stored: str, current: str) -> bool:
    """Whether a stored hash names the same request as a hash made now."""
    if stored == current:
        return True
    # A hash stored before versions existed is the bare hex of version 1's canonical form.
    return ":" not in stored and current == f"{VERSION}:{stored}"


def meaning_of(command: Any) -> dict:
    """A command dataclass as the meaning its hash covers: its kind and every field that
    differs from the field's default. Adding a field with a default to a command keeps
    the hash of every request made before, so redeliveries still replay after an upgrade."""
    fields = {}
    for field in dataclasses.fields(command):
        value = getattr(command, field.name)
        if field.default is not dataclasses.MISSING and value == field.default:
            continue
        if field.default_factory is not dataclasses.MISSING and value == field.default_factory():
            continue
        fields[field.name] = _plain(value)
    return {"kind": type(command).__name__, "fields": fields}


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return meaning_of(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
