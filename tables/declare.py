"""The tables of the Faust app: `wallets` (key tenant|player) and `pools` (key tenant|pool,
and tenant|pool|op|{operation} for an operation's record, see agents/jackpot.py).

Keys and values are bytes, so Faust uses the raw codec for the changelog, both when
writing and when recovering; the values are the msgpack records of tables/wallets.py
and tables/pools.py. The store reads a newly assigned changelog partition in bulk
(tables/store.py)."""
from __future__ import annotations

import faust

from config import Settings
from tables.store import register as register_store

WALLET_TABLE = "wallets"
POOL_TABLE = "pools"


def declare_tables(app: faust.App, settings: Settings) -> tuple[faust.Table, faust.Table]:
    """Declare both tables on the Faust app; returns (wallets, pools)."""
    store = register_store()
    wallets = app.Table(
        WALLET_TABLE, default=None, partitions=settings.topic_partitions, key_type=bytes, value_type=bytes,
        store=store,
    )
    pools = app.Table(
        POOL_TABLE, default=None, partitions=settings.topic_partitions, key_type=bytes, value_type=bytes,
        store=store,
    )
    return wallets, pools
