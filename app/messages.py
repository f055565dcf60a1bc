"""Wire format of the messages on Bankroll's topics (msgpack maps).

A command message carries everything the agent's decision needs from outside: tenant,
idempotency key, request hash and the time the request was received, so a replay of the
same message decides exactly as the first run did."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

from app.domain.ledger import Posting
from app.domain.wallet.core import ApplyPspResult, Command, CreatePlayer, RequestDeposit

COMMAND_TYPES: dict[str, type] = {
    "create_player": CreatePlayer,
    "request_deposit": RequestDeposit,
    "apply_psp_result": ApplyPspResult,
}
COMMAND_NAMES = {cls: name for name, cls in COMMAND_TYPES.items()}
READ_WALLET = "read_wallet"


def request_hash(body: Any) -> str:
    """Hash of a request's meaning: canonical JSON, so key order and spacing do not matter."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def wallet_key(tenant_id: str, player_id: str) -> bytes:
    """The partition key of everything about one player: tenant-scoped player id."""
    return f"{tenant_id}|{player_id}".encode()


@dataclass(frozen=True, slots=True)
class CommandEnvelope:
    kind: str
    tenant_id: str
    operation_key: str
    request_hash: str
    now_ms: int
    reply_to: str  # Redis channel of the web process waiting for the result ("" = nobody)
    request_id: str  # the waiting request's id on that channel
    payload: dict

    def encode(self) -> bytes:
        return msgpack.packb(asdict(self), use_bin_type=True)

    @classmethod
    def decode(cls, raw: bytes) -> "CommandEnvelope":
        return cls(**msgpack.unpackb(raw, raw=False))

    def command(self) -> Command:
        return COMMAND_TYPES[self.kind](**self.payload)

    @classmethod
    def wrap(cls, command: Command, **fields: Any) -> "CommandEnvelope":
        return cls(kind=COMMAND_NAMES[type(command)], payload=asdict(command), **fields)


def encode_reply(request_id: str, status_code: str, body: dict) -> bytes:
    return msgpack.packb([request_id, status_code, body], use_bin_type=True)


def decode_reply(raw: bytes) -> tuple[str, str, dict]:
    request_id, code, body = msgpack.unpackb(raw, raw=False)
    return request_id, code, body


def encode_postings(postings: tuple[Posting, ...] | list[Posting]) -> bytes:
    return msgpack.packb([p.to_wire() for p in postings], use_bin_type=True)


def decode_postings(raw: bytes) -> list[Posting]:
    return [Posting.from_wire(row) for row in msgpack.unpackb(raw, raw=False)]
