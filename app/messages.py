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

from app.domain.audit import AuditRecord
from app.domain.ledger import Posting
from app.domain.wallet import core as w

COMMAND_TYPES: dict[str, type] = {
    "create_player": w.CreatePlayer,
    "set_limits": w.SetLimits,
    "set_player_status": w.SetPlayerStatus,
    "request_deposit": w.RequestDeposit,
    "apply_psp_result": w.ApplyPspResult,
    "place_bet": w.PlaceBet,
    "settle_bet": w.SettleBet,
    "cancel_bet": w.CancelBet,
    "capture_hold": w.CaptureHold,
    "release_hold": w.ReleaseHold,
    "request_withdrawal": w.RequestWithdrawal,
    "apply_withdrawal_result": w.ApplyWithdrawalResult,
    "grant_bonus": w.GrantBonus,
    "convert_fx": w.ConvertFx,
    "adjust": w.Adjust,
    "play_round": w.PlayRound,
    "tick": w.Tick,
}
COMMAND_NAMES = {cls: name for name, cls in COMMAND_TYPES.items()}
# Reads go through the owning agent too when the Redis snapshot is missing, so they see
# every write before them on the partition.
READ_WALLET = "read_wallet"
READ_WITHDRAWAL = "read_withdrawal"
READ_LIMITS = "read_limits"
READ_KINDS = frozenset({READ_WALLET, READ_WITHDRAWAL, READ_LIMITS})
# A reply_to with this prefix names a topic rather than a Redis channel: results of
# commands that arrive on a stream (game rounds) go back on a stream.
TOPIC_REPLY_PREFIX = "topic:"


def _tuples(value: Any) -> Any:
    """msgpack returns lists; the commands are frozen dataclasses of tuples."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


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

    def command(self) -> w.Command:
        return COMMAND_TYPES[self.kind](**{k: _tuples(v) for k, v in self.payload.items()})

    @classmethod
    def wrap(cls, command: w.Command, **fields: Any) -> "CommandEnvelope":
        return cls(kind=COMMAND_NAMES[type(command)], payload=asdict(command), **fields)


def encode_reply(request_id: str, status_code: str, body: dict) -> bytes:
    return msgpack.packb([request_id, status_code, body], use_bin_type=True)


def decode_reply(raw: bytes) -> tuple[str, str, dict]:
    request_id, code, body = msgpack.unpackb(raw, raw=False)
    return request_id, code, body


def encode_ledger_batch(postings: tuple[Posting, ...] | list[Posting], audit: tuple[AuditRecord, ...] = ()) -> bytes:
    """One message on `ledger.postings`: an operation's legs and its audit records."""
    return msgpack.packb({"p": [p.to_wire() for p in postings], "a": [a.to_wire() for a in audit]},
                         use_bin_type=True)


def decode_ledger_batch(raw: bytes) -> tuple[list[Posting], list[AuditRecord]]:
    data = msgpack.unpackb(raw, raw=False)
    if isinstance(data, list):  # the first format carried postings only
        return [Posting.from_wire(row) for row in data], []
    return [Posting.from_wire(row) for row in data["p"]], [AuditRecord.from_wire(row) for row in data["a"]]
