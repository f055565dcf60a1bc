"""msgpack encoding of the pool record, the value of the changelogged pools table.

Plain lists and maps, field by field, so the record stays readable by any msgpack tool
and a renamed Python attribute cannot silently change the stored format. The hidden
drop points are in the record (the agent needs them to know when to drop): the record is
internal and never served; reads go through core.pool_view."""
from __future__ import annotations

import msgpack

from app.domain.audit import AuditRecord
from app.domain.jackpot.state import (
    LastWin, OperationRecord, Participant, PayoutRequest, PoolConfig, PoolState, TierConfig, TierState, Totals, Win,
)
from app.domain.ledger import Posting

FORMAT_VERSION = 1


def _config(c: PoolConfig) -> list:
    tiers = [[t.name, t.seed_minor, t.cap_minor, t.share_bps, t.odds_ppb, t.drop_min_minor, t.drop_max_minor]
             for t in c.tiers]
    return [c.pool_id, c.kind, list(c.brand_ids), c.region, c.currency, c.contribution_bps, tiers,
            c.server_seed_hash, c.deadline_ms, c.period_ms, c.min_bet_minor, c.status, c.name]


def _config_from(row: list) -> PoolConfig:
    pool_id, kind, brands, region, currency, bps, tiers, seed_hash, deadline, period, min_bet, status, name = row
    return PoolConfig(pool_id, kind, tuple(brands), region, currency, bps, tuple(TierConfig(*t) for t in tiers),
                      seed_hash, deadline, period, min_bet, status, name)


def _tier(t: TierState) -> list:
    last = None if t.last_win is None else [t.last_win.trigger_id, t.last_win.player_id, t.last_win.amount_minor,
                                              t.last_win.at_ms]
    return [t.size_minor, t.reserve_minor, t.cycle, t.drop_point_minor, t.drop_nonce, t.drop_commitment, last]


def _tier_from(name: str, row: list) -> TierState:
    size, reserve, cycle, point, nonce, commitment, last = row
    return TierState(name, size, reserve, cycle, point, nonce, commitment, None if last is None else LastWin(*last))


def _win(w: Win) -> list:
    return [w.tier, w.amount_minor, w.player_id, w.round_id, w.brand_id, w.region, w.reason, w.state, w.attempt,
            w.created_at_ms, w.changed_at_ms, w.fail_reason, w.retryable, w.closed_at_ms]


def _operation(r: OperationRecord) -> list:
    return [r.request_hash, r.code, r.body, r.at_ms, [p.to_wire() for p in r.postings],
            [p.to_wire() for p in r.payouts], [a.to_wire() for a in r.audit]]


def _operation_from(row: list) -> OperationRecord:
    request_hash, code, body, at_ms, postings, payouts, audit = row
    return OperationRecord(request_hash, code, body, at_ms, tuple(Posting.from_wire(p) for p in postings),
                           tuple(PayoutRequest.from_wire(p) for p in payouts),
                           tuple(AuditRecord.from_wire(a) for a in audit))


def encode_operation(version: int, record: OperationRecord) -> bytes:
    """An operation's record, stored beside the pool record (see agents/jackpot.py) with
    the pool version its decision produced."""
    return msgpack.packb([FORMAT_VERSION, version, _operation(record)], use_bin_type=True)


def operation_at_ms(raw: bytes) -> int:
    """When an encoded operation record was made, read without decoding the rest: the
    worker's scan asks this of every stored operation to find the ones to prune."""
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(raw)
    unpacker.read_array_header()
    if unpacker.unpack() != FORMAT_VERSION:
        raise ValueError("unknown operation record format")
    unpacker.skip()  # the pool version
    unpacker.read_array_header()
    for _ in range(3):  # request hash, code, body
        unpacker.skip()
    return unpacker.unpack()


def decode_operation(raw: bytes) -> tuple[int, OperationRecord]:
    fmt, version, row = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if fmt != FORMAT_VERSION:
        raise ValueError(f"unknown operation record format {fmt!r}")
    return version, _operation_from(row)


def encode_state(state: PoolState) -> bytes:
    return msgpack.packb(
        {
            "v": FORMAT_VERSION,
            "tenant": state.tenant_id,
            "pool": state.pool_id,
            "config": None if state.config is None else _config(state.config),
            "tiers": {name: _tier(t) for name, t in state.tiers.items()},
            "deadline": state.deadline_ms,
            "participants": {p.player_id: [p.entries, p.brand_id, p.region, p.round_id]
                             for p in state.participants.values()},
            "wins": {w.trigger_id: _win(w) for w in state.wins.values()},
            "totals": [state.totals.contributions_minor, state.totals.seeds_minor, state.totals.payouts_minor],
            "chain": [state.chain_seq, state.chain_hash],
            "ops": {key: _operation(r) for key, r in state.operations.items()},
            "version": state.version,
        },
        use_bin_type=True,
    )


def decode_state(raw: bytes) -> PoolState:
    d = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if d.get("v") != FORMAT_VERSION:
        raise ValueError(f"unknown pool record format {d.get('v')!r}")
    chain_seq, chain_hash = d["chain"]
    return PoolState(
        tenant_id=d["tenant"],
        pool_id=d["pool"],
        config=None if d["config"] is None else _config_from(d["config"]),
        tiers={name: _tier_from(name, row) for name, row in d["tiers"].items()},
        deadline_ms=d["deadline"],
        participants={k: Participant(k, *v) for k, v in d["participants"].items()},
        wins={k: Win(k, *v) for k, v in d["wins"].items()},
        totals=Totals(*d["totals"]),
        chain_seq=chain_seq,
        chain_hash=chain_hash,
        operations={key: _operation_from(row) for key, row in d["ops"].items()},
        version=d["version"],
    )
