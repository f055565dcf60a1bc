"""msgpack encoding of the wallet record, the value of the changelogged `wallets` table.

Plain lists and maps, field by field, so the record stays readable by any msgpack tool
and a renamed Python attribute cannot silently change the stored format."""
from __future__ import annotations

import msgpack

from app.domain.ledger import Posting
from app.domain.wallet.core import OperationRecord, PendingDeposit, WalletState

FORMAT_VERSION = 1


def encode_state(state: WalletState) -> bytes:
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
                d.deposit_id: [d.amount_minor, d.currency, d.method, d.state] for d in state.deposits.values()
            },
            "ops": {
                key: [r.request_hash, r.code, r.body, r.at_ms, [p.to_wire() for p in r.postings]]
                for key, r in state.operations.items()
            },
            "version": state.version,
        },
        use_bin_type=True,
    )


def decode_state(raw: bytes) -> WalletState:
    d = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if d.get("v") != FORMAT_VERSION:
        raise ValueError(f"unknown wallet record format {d.get('v')!r}")
    return WalletState(
        tenant_id=d["tenant"],
        player_id=d["player"],
        registered=d["registered"],
        currency=d["currency"],
        country=d["country"],
        balances=dict(d["balances"]),
        deposits={k: PendingDeposit(k, *v) for k, v in d["deposits"].items()},
        operations={
            key: OperationRecord(h, code, body, at_ms, tuple(Posting.from_wire(p) for p in postings))
            for key, (h, code, body, at_ms, postings) in d["ops"].items()
        },
        version=d["version"],
    )
