"""Wire format of the messages on Bankroll's topics (msgpack maps).

A command message carries everything the agent's decision needs from outside: tenant,
idempotency key, request hash and the time the request was received, so a replay of the
same message decides exactly as the first run did."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import msgpack

from app.domain import idempotency
from app.domain.audit import AuditRecord
from app.domain.ledger import Posting
from app.domain.jackpot import core as jp
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
    "credit_jackpot": w.CreditJackpot,
    "tick": w.Tick,
}
# Commands of the jackpot agent, on `jp.commands`. The wallet's payout answers arrive on
# their own topics as JSON events and become PayoutCredited / PayoutFailed there.
JP_COMMAND_TYPES: dict[str, type] = {
    "jp_create_pool": jp.CreatePool,
    "jp_reconfigure": jp.Reconfigure,
    "jp_contribute": jp.Contribute,
    "jp_check_candidate": jp.CheckCandidate,
    "jp_trigger": jp.Trigger,
    "jp_tick": jp.Tick,
    "jp_retry_payout": jp.RetryPayout,
}
COMMAND_TYPES.update(JP_COMMAND_TYPES)
COMMAND_NAMES = {cls: name for name, cls in COMMAND_TYPES.items()}
READ_POOL = "jp_read_pool"
# Drop the operation records of a pool named in the payload (older than the retention).
PRUNE_POOL_OPERATIONS = "jp_prune_operations"
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
    """Hash of a request's meaning (the client's body): canonical and versioned, the same
    for every aggregate (app.domain.idempotency)."""
    return idempotency.request_hash(body)


def wallet_key(tenant_id: str, player_id: str) -> bytes:
    """The partition key of everything about one player: tenant-scoped player id."""
    return f"{tenant_id}|{player_id}".encode()


def pool_key(tenant_id: str, pool_id: str) -> bytes:
    """The partition key of everything about one jackpot pool."""
    return f"{tenant_id}|{pool_id}".encode()


def json_bytes(value: Any) -> bytes:
    """The JSON events of the jp.* and game.rounds.results topics, for any consumer."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


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

    def command(self) -> w.Command | jp.Command:
        cls = COMMAND_TYPES[self.kind]
        fields = {k: _tuples(v) for k, v in self.payload.items()}
        # asdict() turned the tiers of these two into maps; they travel as such.
        if cls is jp.CreatePool:
            fields["tiers"] = tuple(jp.TierConfig(**t) for t in self.payload.get("tiers", ()))
        elif cls is jp.Reconfigure:
            fields["tiers"] = tuple(jp.TierPatch(**t) for t in self.payload.get("tiers", ()))
        return cls(**fields)

    @classmethod
    def wrap(cls, command: w.Command | jp.Command, **fields: Any) -> "CommandEnvelope":
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
