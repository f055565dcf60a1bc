"""msgpack encoding of the wallet record, the value of the changelogged `wallets` table.

Plain lists and maps, field by field, so the record stays readable by any msgpack tool
and a renamed Python attribute cannot silently change the stored format. Format 1
records (before holds, withdrawals, bonuses and limits existed) and format 2 records
(whose operations carried their postings, now stored with the record in PostgreSQL
instead) still decode."""
from __future__ import annotations

import msgpack

from app.domain.wallet.state import (
    Bonus, Hold, Limits, OperationRecord, PendingDeposit, WalletState, Withdrawal,
)

FORMAT_VERSION = 3


def encode_state(state: WalletState) -> bytes:
    limits = state.limits
    return msgpack.packb(
        {
            "v": FORMAT_VERSION,
            "tenant": state.tenant_id,
            "player": state.player_id,
            "registered": state.registered,
            "currency": state.currency,
            "country": state.country,
            "balances": state.balances,
            "deposits": {
                d.deposit_id: [d.amount_minor, d.currency, d.method, d.state, d.closed_at_ms]
                for d in state.deposits.values()
            },
            "holds": {
                h.hold_id: [h.kind, h.ref, h.currency, h.amount_minor, [list(s) for s in h.sources], h.expires_at_ms,
                            h.policy, h.provider, h.captured_minor, h.state, h.closed_at_ms]
                for h in state.holds.values()
            },
            "withdrawals": {
                w.withdrawal_id: [w.amount_minor, w.currency, w.method, w.destination, w.state, w.hold_id,
                                  w.created_at_ms, w.closed_at_ms]
                for w in state.withdrawals.values()
            },
            "bonuses": {
                b.bonus_id: [b.currency, b.amount_minor, b.wager_required_minor, b.expires_at_ms, b.state,
                             b.closed_at_ms]
                for b in state.bonuses.values()
            },
            "limits": [limits.values, {k: list(v) for k, v in limits.pending.items()}, limits.cool_off_until_ms,
                       limits.self_excluded_until_ms],
            "usage": state.usage,
            "session": [state.session_started_ms, state.last_bet_ms],
            "kyc": [state.kyc_status, state.aml_hold],
            "ops": {key: [r.request_hash, r.code, r.body, r.at_ms] for key, r in state.operations.items()},
            "version": state.version,
        },
        use_bin_type=True,
    )


def record_version(raw: bytes) -> int:
    """The version of an encoded record, read without building the state."""
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)["version"]


def decode_state(raw: bytes) -> WalletState:
    d = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if d.get("v") not in (1, 2, FORMAT_VERSION):
        raise ValueError(f"unknown wallet record format {d.get('v')!r}")
    values, pending, cool_off, excluded = d.get("limits", [{}, {}, 0, 0])
    session_started, last_bet = d.get("session", [0, 0])
    kyc_status, aml_hold = d.get("kyc", ["PENDING", False])
    return WalletState(
        tenant_id=d["tenant"],
        player_id=d["player"],
        registered=d["registered"],
        currency=d["currency"],
        country=d["country"],
        balances=dict(d["balances"]),
        deposits={k: PendingDeposit(k, *v) for k, v in d["deposits"].items()},
        holds={
            k: Hold(k, kind, ref, cur, amount, tuple((w, a) for w, a in sources), expires, policy, provider,
                    captured, state, closed)
            for k, (kind, ref, cur, amount, sources, expires, policy, provider, captured, state, closed)
            in d.get("holds", {}).items()
        },
        withdrawals={k: Withdrawal(k, *v) for k, v in d.get("withdrawals", {}).items()},
        bonuses={k: Bonus(k, *v) for k, v in d.get("bonuses", {}).items()},
        limits=Limits(dict(values), {k: (v[0], v[1]) for k, v in pending.items()}, cool_off, excluded),
        usage=dict(d.get("usage", {})),
        session_started_ms=session_started,
        last_bet_ms=last_bet,
        kyc_status=kyc_status,
        aml_hold=aml_hold,
        operations={key: OperationRecord(*row[:4]) for key, row in d["ops"].items()},
        version=d["version"],
    )
