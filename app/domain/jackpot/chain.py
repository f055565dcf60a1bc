"""The hash-chained audit log (WORM) of a jackpot pool.

Each entry names its position (seq), the hash of the entry before it (prev_hash; the
first entry names GENESIS), what happened (kind) and the details (payload, plain JSON:
strings, integers, booleans, null, lists and string-keyed maps; never floats). Its hash
is SHA-256 over prev_hash followed by the canonical JSON of {seq, kind, payload}, so
changing, removing, inserting or reordering any entry breaks every link after it.

Kinds written by the pool core: pool_created, config_changed, seed_commitment, seed,
drop_commitment, drop, drop_reveal, deadline_rollover, payout_retry.

The pool record keeps only the chain's head (next seq and last hash); the entries leave
the core as audit records (see core.chain_audit_record) and are stored append-only.
Publishing the head alongside a pool's size lets a verifier also detect entries cut off
the end.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Sequence

from app.domain.errors import InvariantViolation

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class ChainEntry:
    seq: int
    prev_hash: str
    kind: str
    payload: dict
    hash: str

    def to_dict(self) -> dict:
        return {"seq": self.seq, "prev_hash": self.prev_hash, "kind": self.kind, "payload": self.payload,
                "hash": self.hash}

    @classmethod
    def from_dict(cls, d: dict) -> "ChainEntry":
        return cls(d["seq"], d["prev_hash"], d["kind"], d["payload"], d["hash"])


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where the next entry goes: its seq and the hash it must link to."""

    seq: int = 0
    hash: str = GENESIS


def _check_plain(value: object, where: str = "payload") -> None:
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, where)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvariantViolation(f"{where} has a non-string key {key!r}")
            _check_plain(item, where)
        return
    # Floats in particular: their text form is not canonical across implementations.
    raise InvariantViolation(f"{where} holds a {type(value).__name__}, which has no canonical JSON form")


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces, UTF-8 kept as is: the same data always gives the same text."""
    _check_plain(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(prev_hash: str, seq: int, kind: str, payload: dict) -> str:
    body = canonical_json({"seq": seq, "kind": kind, "payload": payload})
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def make_entry(head: ChainHead, kind: str, payload: dict) -> ChainEntry:
    """The entry that goes at head; the caller advances its head to (seq + 1, entry.hash)."""
    # Round-trip the payload so the entry holds exactly what its hash covers (tuples
    # become lists), and a later edit of the caller's dict cannot change it.
    plain = json.loads(canonical_json(payload))
    return ChainEntry(head.seq, head.hash, kind, plain, entry_hash(head.hash, head.seq, kind, plain))


def head_after(entries: Sequence[ChainEntry]) -> ChainHead:
    return ChainHead(entries[-1].seq + 1, entries[-1].hash) if entries else ChainHead()


def append(entries: Sequence[ChainEntry], kind: str, payload: dict) -> tuple[ChainEntry, ...]:
    """A new chain: entries followed by one more entry of kind with payload."""
    return tuple(entries) + (make_entry(head_after(entries), kind, payload),)


def verify(entries: Sequence[ChainEntry], head: ChainHead | None = None) -> int | None:
    """The index of the first entry that is not where an untouched chain would have it,
    or None when the chain is intact.

    An edited entry fails its own hash; a removed, inserted or moved entry fails the seq
    or prev_hash check at the first position it disturbs. Given the published head, a
    chain cut short (or extended) is reported at the first missing (or extra) position,
    and a chain rewritten end to end, consistent in itself but not ending at the head,
    at its last entry."""
    prev = GENESIS
    for index, entry in enumerate(entries):
        if entry.seq != index or entry.prev_hash != prev:
            return index
        try:
            expected = entry_hash(entry.prev_hash, entry.seq, entry.kind, entry.payload)
        except InvariantViolation:
            return index
        if entry.hash != expected:
            return index
        prev = entry.hash
    if head is not None:
        if head.seq != len(entries):
            return min(head.seq, len(entries))
        if prev != head.hash:
            return max(len(entries) - 1, 0)
    return None
