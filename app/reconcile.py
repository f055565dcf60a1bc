"""Reconciliation: `python -m app.reconcile [--tenant T] [--confirm-after-s 1]`.

Every player account is held three times: the PostgreSQL ledger (the long-term truth), the
wallet record the agents decide from (checkpointed to PostgreSQL in the same transaction
as its postings, `agent_records`), and the Redis snapshot (what reads are served from). This compares them per account
`player:{player_id}:{TYPE}:{CUR}`:

- ledger balance (credits minus debits, app.domain.ledger.account_deltas semantics)
  against the table record's balances["{TYPE}:{CUR}"] (a missing key is 0);
- the Redis snapshot's "available" for that type and currency against the record. An
  expired snapshot is "not cached", not drift.

Jackpot pools are held three times too: the ledger, the pool record (`agent_records`)
and the Redis pool snapshot. Each tier's size is the balance of its
liability account and its reserve that of its reserve account (core.liability_account,
core.reserve_account); the record's size and reserve are compared with the ledger, and
the snapshot's with the record's. A pool record must also conserve money on its own
(core.conservation); one that does not is reported, off by the amount it cannot account
for.

It prints every account with drift and a summary with the total absolute drift in minor
units and in ppm of the ledger's volume (the sum of all leg amounts), and exits 0 when
there is no drift, 1 when there is, 2 when it could not reconcile (a service down).

The records and the ledger are read in one snapshot of PostgreSQL: a record is stored
only with the postings of the batch that made it, so the two agree exactly at any moment.
The Redis snapshot is written after the commit, so under live traffic a player or pool
active during the run can look out of step with it for a moment: an account found
drifting is checked once more after a pause and reported only when it drifts both times.

The comparison (`compare`, `compare_pools`, `confirm`, `render`) is pure: plain data in,
report out. The functions below it do the reading."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import traceback
from dataclasses import dataclass, field, replace
from typing import Callable, Hashable, Iterable, Mapping, TextIO, TypeVar

import asyncpg

from app.domain.jackpot.core import Conservation, conservation, liability_account, reserve_account
from app.domain.jackpot.state import MAIN_TIER, PoolState
from app.domain.ledger import player_account
from config import Settings, load_settings
from storage.postgres.stores import LEDGER_TOTALS, create_pool
from storage.redis.stores import RedisPoolCache, connect as connect_redis, wallet_cache_key
from tables.pools import decode_state as decode_pool_state
from tables.wallets import decode_state

# The agents' names in agent_records (agents/wallet.py and agents/jackpot.py), spelled out
# because app/ does not import the agents built on top of it; a test keeps them equal.
WALLET_AGENT, POOL_AGENT = "wallet", "pool"

# What marked an operation record's key (tenant|pool|op|{operation}) in the pools table
# before answers moved to PostgreSQL (agents/jackpot.py); such keys hold no money.
POOL_OPERATION_MARK = b"|op|"

EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2

NOT_CACHED = "not cached"
NOT_IN_SNAPSHOT = "not in snapshot"
CACHED = "cached"
# A pool's ledger account that no tier of the pool's record names: the record's own rows
# already compare the snapshot, so this one is compared with the ledger only.
NOT_A_RECORD_ACCOUNT = "not a record account"

# The two amounts a pool tier holds, each in its own ledger account.
SIZE, RESERVE = "size", "reserve"


# ---------------------------------------------------------------- the pure comparison

@dataclass(frozen=True)
class TableRecord:
    """What reconciliation needs of one wallet record: "TYPE:CUR" -> balance, and its version."""

    balances: Mapping[str, int]
    version: int


@dataclass(frozen=True)
class Snapshot:
    """A Redis wallet snapshot: "TYPE:CUR" -> available, and the record version it shows."""

    available: Mapping[str, int]
    version: int


class _Drift:
    """Drift of one amount held three times: ledger, table record and cache."""

    ledger: int
    table: int
    cache: int | None
    cache_state: str

    @property
    def table_drift(self) -> int:
        """Table minus ledger: positive when the record holds more than the ledger says."""
        return self.table - self.ledger

    @property
    def cache_drift(self) -> int:
        """Snapshot minus table; nothing when there is no snapshot value to compare."""
        return 0 if self.cache is None else self.cache - self.table

    @property
    def drift(self) -> int:
        return abs(self.table_drift) + abs(self.cache_drift)


@dataclass(frozen=True)
class AccountRow(_Drift):
    tenant_id: str
    player_id: str
    wallet_type: str
    currency: str
    ledger: int
    table: int
    table_version: int | None  # None: no table record for the player
    cache: int | None  # None: see cache_state
    cache_state: str  # CACHED | NOT_CACHED | NOT_IN_SNAPSHOT
    cache_version: int | None = None

    @property
    def account(self) -> str:
        return player_account(self.player_id, self.wallet_type, self.currency)


@dataclass(frozen=True)
class PoolAmount:
    """One amount a pool record holds in one ledger account."""

    tier: str
    part: str  # SIZE | RESERVE
    amount: int


@dataclass(frozen=True)
class PoolRecord:
    """What reconciliation needs of one pool record: ledger account -> the amount the
    record holds there, its version, and its conservation figures."""

    amounts: Mapping[str, PoolAmount]
    version: int
    conservation: Conservation


@dataclass(frozen=True)
class PoolSnapshot:
    """A Redis pool snapshot: (tier, SIZE | RESERVE) -> amount, and the record version it shows."""

    amounts: Mapping[tuple[str, str], int]
    version: int


@dataclass(frozen=True)
class PoolRow(_Drift):
    tenant_id: str
    pool_id: str
    tier: str
    part: str  # SIZE | RESERVE
    account: str  # the ledger account holding it
    ledger: int
    table: int
    table_version: int | None  # None: no table record for the pool
    cache: int | None  # None: see cache_state
    cache_state: str  # CACHED | NOT_CACHED | NOT_A_RECORD_ACCOUNT
    cache_version: int | None = None


@dataclass(frozen=True)
class UnbalancedPool:
    """A pool record that does not conserve money: contributions + seeds != sizes and
    reserves + payouts."""

    tenant_id: str
    pool_id: str
    version: int
    figures: Conservation

    @property
    def imbalance(self) -> int:
        """What came in minus what the record holds or paid out."""
        f = self.figures
        return f.contributions_minor + f.seeds_minor - f.pools_minor - f.payouts_minor

    @property
    def drift(self) -> int:
        return abs(self.imbalance)


@dataclass(frozen=True)
class PoolReport:
    compared: int = 0  # pool accounts compared (a size and a reserve per tier)
    drifting: tuple[PoolRow, ...] = ()
    unbalanced: tuple[UnbalancedPool, ...] = ()
    pools: int = 0
    pools_not_cached: int = 0

    @property
    def total_drift(self) -> int:
        return sum(row.drift for row in self.drifting) + sum(pool.drift for pool in self.unbalanced)


@dataclass(frozen=True)
class Report:
    compared: int  # player accounts compared
    drifting: tuple[AccountRow, ...]
    ledger_volume: int  # sum of the amounts of every ledger leg in scope
    players: int = 0
    players_not_cached: int = 0
    notes: tuple[str, ...] = field(default=())
    jackpot: PoolReport = PoolReport()

    @property
    def total_drift(self) -> int:
        return sum(row.drift for row in self.drifting) + self.jackpot.total_drift

    @property
    def drift_milli_ppm(self) -> int | None:
        """Total absolute drift per million of ledger volume, in thousandths (integers only,
        so no rounding can hide a drift of one minor unit); None for an empty ledger."""
        if self.ledger_volume == 0:
            return None
        return self.total_drift * 1_000_000_000 // self.ledger_volume

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.total_drift == 0 else EXIT_DRIFT


def parse_player_account(account: str) -> tuple[str, str, str] | None:
    """(player_id, TYPE, CUR) of a player account name, None for any other account. The
    player id may itself contain colons: type and currency are the last two parts."""
    if not account.startswith("player:"):
        return None
    parts = account[len("player:"):].rsplit(":", 2)
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def ledger_volume(totals: Iterable[tuple[int, int]]) -> int:
    """The volume behind (balance, turnover) account totals: every leg's amount is in the
    turnover of exactly two accounts, its debit and its credit account."""
    return sum(turnover for _, turnover in totals) // 2


def compare(
    ledger: Mapping[tuple[str, str], int],
    records: Mapping[tuple[str, str], TableRecord],
    snapshots: Mapping[tuple[str, str], Snapshot | None],
    volume: int,
) -> Report:
    """Compare every player account the ledger or a table record knows.

    ledger: (tenant_id, account) -> ledger balance (system accounts are ignored);
    records: (tenant_id, player_id) -> the player's table record;
    snapshots: (tenant_id, player_id) -> the Redis snapshot, absent or None when expired;
    volume: the ledger volume the drift is measured against (see ledger_volume)."""
    balances: dict[tuple[str, str], dict[str, int]] = {}
    for (tenant_id, account), balance in ledger.items():
        parsed = parse_player_account(account)
        if parsed is not None:
            player_id, wallet_type, currency = parsed
            balances.setdefault((tenant_id, player_id), {})[f"{wallet_type}:{currency}"] = balance
    players = sorted(set(balances) | set(records))

    compared = 0
    not_cached = 0
    drifting: list[AccountRow] = []
    for tenant_id, player_id in players:
        in_ledger = balances.get((tenant_id, player_id), {})
        record = records.get((tenant_id, player_id))
        in_table = dict(record.balances) if record is not None else {}
        snapshot = snapshots.get((tenant_id, player_id))
        if snapshot is None:
            not_cached += 1
        for key in sorted(set(in_ledger) | set(in_table)):
            wallet_type, _, currency = key.partition(":")
            if snapshot is None:
                cache, cache_state = None, NOT_CACHED
            elif key in snapshot.available:
                cache, cache_state = snapshot.available[key], CACHED
            else:
                # Snapshots show the spendable wallets only (HOLD is not one of them).
                cache, cache_state = None, NOT_IN_SNAPSHOT
            row = AccountRow(
                tenant_id=tenant_id, player_id=player_id, wallet_type=wallet_type, currency=currency,
                ledger=in_ledger.get(key, 0), table=in_table.get(key, 0),
                table_version=record.version if record is not None else None,
                cache=cache, cache_state=cache_state, cache_version=snapshot.version if snapshot else None,
            )
            compared += 1
            if row.drift:
                drifting.append(row)
    return Report(compared=compared, drifting=tuple(drifting), ledger_volume=volume, players=len(players),
                  players_not_cached=not_cached)


def parse_pool_account(account: str) -> tuple[str, str | None, str] | None:
    """(pool_id, tier, SIZE | RESERVE) of a jackpot liability account
    `system:JACKPOT_LIABILITY:{pool_id}[:{tier}][:reserve]:{CUR}`, None for any other
    account; the tier is None when the account names none (every kind but multi_tier).
    Pool ids and tier names hold no colon, and no tier is called "reserve"."""
    parts = account.split(":")
    if len(parts) < 4 or parts[:2] != ["system", "JACKPOT_LIABILITY"]:
        return None
    middle = parts[2:-1]
    part = SIZE
    if len(middle) > 1 and middle[-1] == RESERVE:
        middle, part = middle[:-1], RESERVE
    if len(middle) == 1 and middle[0]:
        return middle[0], None, part
    if len(middle) == 2 and all(middle):
        return middle[0], middle[1], part
    return None


def pool_record(state: PoolState) -> PoolRecord | None:
    """The reconciliation's view of a pool record; None for a record without a
    configuration, which holds no money."""
    config = state.config
    if config is None:
        return None
    amounts: dict[str, PoolAmount] = {}
    for name, tier in state.tiers.items():
        amounts[liability_account(config, name)] = PoolAmount(name, SIZE, tier.size_minor)
        amounts[reserve_account(config, name)] = PoolAmount(name, RESERVE, tier.reserve_minor)
    return PoolRecord(amounts=amounts, version=state.version, conservation=conservation(state))


def compare_pools(
    ledger: Mapping[tuple[str, str], int],
    records: Mapping[tuple[str, str], PoolRecord],
    snapshots: Mapping[tuple[str, str], PoolSnapshot | None],
) -> PoolReport:
    """Compare every jackpot pool account the ledger or a pool record knows, and check
    that every pool record conserves money.

    ledger: (tenant_id, account) -> ledger balance (accounts of no pool are ignored);
    records: (tenant_id, pool_id) -> the pool's table record;
    snapshots: (tenant_id, pool_id) -> the Redis snapshot, absent or None when expired."""
    in_ledger: dict[tuple[str, str], dict[str, int]] = {}
    named: dict[str, tuple[str, str]] = {}  # ledger account -> (tier, part) as its name says
    for (tenant_id, account), balance in ledger.items():
        parsed = parse_pool_account(account)
        if parsed is not None:
            pool_id, tier, part = parsed
            in_ledger.setdefault((tenant_id, pool_id), {})[account] = balance
            named[account] = (tier or MAIN_TIER, part)
    pools = sorted(set(in_ledger) | set(records))

    compared = 0
    not_cached = 0
    drifting: list[PoolRow] = []
    unbalanced: list[UnbalancedPool] = []
    for tenant_id, pool_id in pools:
        balances = in_ledger.get((tenant_id, pool_id), {})
        record = records.get((tenant_id, pool_id))
        held = record.amounts if record is not None else {}
        snapshot = snapshots.get((tenant_id, pool_id))
        if snapshot is None:
            not_cached += 1
        if record is not None and not record.conservation.balanced:
            unbalanced.append(UnbalancedPool(tenant_id, pool_id, record.version, record.conservation))
        for account in sorted(set(balances) | set(held)):
            if account in held:
                tier, part, table = held[account].tier, held[account].part, held[account].amount
            else:
                (tier, part), table = named[account], 0
            if record is not None and account not in held:
                cache, cache_state = None, NOT_A_RECORD_ACCOUNT
            elif snapshot is None:
                cache, cache_state = None, NOT_CACHED
            else:
                # A snapshot shows every tier of its pool: a tier missing from one counts as
                # 0, as a key missing from a wallet record does.
                cache, cache_state = snapshot.amounts.get((tier, part), 0), CACHED
            row = PoolRow(
                tenant_id=tenant_id, pool_id=pool_id, tier=tier, part=part, account=account,
                ledger=balances.get(account, 0), table=table,
                table_version=record.version if record is not None else None,
                cache=cache, cache_state=cache_state, cache_version=snapshot.version if snapshot else None,
            )
            compared += 1
            if row.drift:
                drifting.append(row)
    return PoolReport(compared=compared, drifting=tuple(drifting), unbalanced=tuple(unbalanced), pools=len(pools),
                      pools_not_cached=not_cached)


_Item = TypeVar("_Item")


def _confirmed(first: Iterable[_Item], second: Iterable[_Item],
               key: Callable[[_Item], Hashable]) -> tuple[tuple[_Item, ...], int]:
    """The items of `second` whose key is among `first`'s, and how many keys were in one only."""
    seen = {key(item) for item in first}
    second = tuple(second)
    kept = tuple(item for item in second if key(item) in seen)
    return kept, len(second) - len(kept) + len(seen - {key(item) for item in second})


def confirm(first: Report, second: Report) -> Report:
    """The second pass, keeping only the accounts that drifted in the first pass too: an
    account that was merely in flight during one pass does not drift in both. The same
    holds for pool accounts and for pool records that do not conserve money."""
    kept, dropped = _confirmed(first.drifting, second.drifting, lambda row: (row.tenant_id, row.account))
    pool_rows, pool_rows_dropped = _confirmed(first.jackpot.drifting, second.jackpot.drifting,
                                              lambda row: (row.tenant_id, row.account))
    unbalanced, unbalanced_dropped = _confirmed(first.jackpot.unbalanced, second.jackpot.unbalanced,
                                                lambda pool: (pool.tenant_id, pool.pool_id))
    notes = second.notes
    if dropped:
        notes += (f"{dropped} account(s) drifted in one pass only (in flight during the run), not reported",)
    if pool_rows_dropped:
        notes += (f"{pool_rows_dropped} pool account(s) drifted in one pass only (in flight during the run), "
                  "not reported",)
    if unbalanced_dropped:
        notes += (f"{unbalanced_dropped} pool record(s) did not conserve money in one pass only, not reported",)
    jackpot = replace(second.jackpot, drifting=pool_rows, unbalanced=unbalanced)
    return replace(second, drifting=kept, notes=notes, jackpot=jackpot)


def format_ppm(milli_ppm: int | None) -> str:
    if milli_ppm is None:
        return "n/a (empty ledger)"
    return f"{milli_ppm // 1000}.{milli_ppm % 1000:03d} ppm"


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def _amounts(row: _Drift) -> tuple[str, str, str, str, str]:
    """The ledger, table, table-ledger, cache and cache-table cells of a row."""
    return (str(row.ledger), str(row.table), f"{row.table_drift:+d}",
            row.cache_state if row.cache is None else str(row.cache),
            "-" if row.cache is None else f"{row.cache_drift:+d}")


def _table(header: tuple[str, ...], body: list[tuple[str, ...]], numeric: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    return ["  ".join(
        cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i]) for i, cell in enumerate(r)
    ).rstrip() for r in (header, *body)]


def render(report: Report) -> str:
    """A readable table of every drifting player account and pool account, the pool
    records that do not conserve money, the notes, and one summary line."""
    lines: list[str] = []
    if report.drifting:
        header = ("tenant", "account", "ledger", "table", "table-ledger", "cache", "cache-table", "versions")
        body = [
            (row.tenant_id, row.account, *_amounts(row),
             f"table {_cell(row.table_version)} / cache {_cell(row.cache_version)}")
            for row in report.drifting
        ]
        lines.extend(_table(header, body, numeric={2, 3, 4, 5, 6}))
        lines.append("")
    jackpot = report.jackpot
    if jackpot.drifting:
        header = ("tenant", "pool", "tier", "part", "ledger", "table", "table-ledger", "cache", "cache-table",
                  "versions")
        body = [
            (row.tenant_id, row.pool_id, row.tier, row.part, *_amounts(row),
             f"table {_cell(row.table_version)} / cache {_cell(row.cache_version)}")
            for row in jackpot.drifting
        ]
        lines.extend(_table(header, body, numeric={4, 5, 6, 7, 8}))
        lines.append("")
    for pool in jackpot.unbalanced:
        f = pool.figures
        lines.append(
            f"tenant {pool.tenant_id} pool {pool.pool_id} (table {pool.version}) does not conserve money: "
            f"contributions {f.contributions_minor} + seeds {f.seeds_minor} != sizes and reserves {f.pools_minor} "
            f"+ payouts {f.payouts_minor} ({pool.imbalance:+d})")
    if jackpot.unbalanced:
        lines.append("")
    lines.extend(f"note: {note}" for note in report.notes)
    lines.append(
        f"{'DRIFT' if report.total_drift else 'OK'}: {len(report.drifting)} of {report.compared} player accounts "
        f"drift ({report.players} players, {report.players_not_cached} not cached); "
        f"{len(jackpot.drifting)} of {jackpot.compared} pool accounts drift ({jackpot.pools} pools, "
        f"{jackpot.pools_not_cached} not cached, {len(jackpot.unbalanced)} not conserving); "
        f"total absolute drift {report.total_drift} minor units = {format_ppm(report.drift_milli_ppm)} "
        f"of ledger volume {report.ledger_volume}"
    )
    return "\n".join(lines)


def apply_changelog(records: dict[tuple[str, str], TableRecord], key: bytes | None, value: bytes | None) -> None:
    """Fold one changelog message into the latest record per key: the value is the
    msgpack wallet record, and an empty value is the deletion of the key."""
    if not key:
        return
    tenant_id, sep, player_id = key.decode().partition("|")
    if not sep:
        raise ValueError(f"changelog key {key!r} is not tenant|player")
    if not value:
        records.pop((tenant_id, player_id), None)
        return
    state = decode_state(value)
    records[(tenant_id, player_id)] = TableRecord(balances=dict(state.balances), version=state.version)


def apply_pool_changelog(records: dict[tuple[str, str], PoolRecord], key: bytes | None,
                         value: bytes | None) -> None:
    """Fold one message of the pools changelog into the latest record per pool: the value
    is the msgpack pool record, an empty value the deletion of the key. The operation
    records stored in the same table (keys tenant|pool|op|{operation}) hold no money and
    are skipped."""
    if not key or POOL_OPERATION_MARK in key:
        return
    tenant_id, sep, pool_id = key.decode().partition("|")
    if not sep:
        raise ValueError(f"changelog key {key!r} is not tenant|pool")
    if not value:
        records.pop((tenant_id, pool_id), None)
        return
    record = pool_record(decode_pool_state(value))
    if record is None:
        records.pop((tenant_id, pool_id), None)
    else:
        records[(tenant_id, pool_id)] = record


def parse_snapshot(raw: str | bytes) -> Snapshot:
    """The Redis snapshot JSON: {"player_id", "wallets": [{"type", "currency", "available", ...}], "version"}."""
    data = json.loads(raw)
    available = {f"{w['type']}:{w['currency']}": w["available"] for w in data.get("wallets", [])}
    return Snapshot(available=available, version=data.get("version", 0))


def parse_pool_snapshot(raw: str | bytes) -> PoolSnapshot:
    """The Redis pool snapshot JSON (core.pool_view): {"tiers": [{"tier", "size", "reserve", ...}], "version", ...}."""
    data = json.loads(raw)
    amounts: dict[tuple[str, str], int] = {}
    for tier in data.get("tiers", []):
        amounts[(tier["tier"], SIZE)] = tier["size"]
        amounts[(tier["tier"], RESERVE)] = tier["reserve"]
    return PoolSnapshot(amounts=amounts, version=data.get("version", 0))


# ---------------------------------------------------------------- the I/O shell

class ReconcileError(Exception):
    """Raised when the reconciliation cannot read what it compares."""


async def read_ledger_and_records(pool: asyncpg.Pool) -> tuple[dict, dict, dict]:
    """Ledger totals, wallet records and pool records, from one snapshot of PostgreSQL."""
    records: dict = {}
    pool_records: dict = {}
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(LEDGER_TOTALS)
        async for row in conn.cursor("SELECT agent, key, record FROM agent_records"):
            if row["agent"] == WALLET_AGENT:
                apply_changelog(records, bytes(row["key"]), bytes(row["record"]))
            elif row["agent"] == POOL_AGENT:
                apply_pool_changelog(pool_records, bytes(row["key"]), bytes(row["record"]))
    totals = {(r["tenant_id"], r["account"]): (r["balance"], r["turnover"]) for r in rows}
    return totals, records, pool_records


async def read_snapshots(redis_client, players: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Snapshot]:
    players = list(players)
    snapshots: dict[tuple[str, str], Snapshot] = {}
    for start in range(0, len(players), 500):
        chunk = players[start:start + 500]
        pipe = redis_client.pipeline(transaction=False)
        for tenant_id, player_id in chunk:
            pipe.hget(wallet_cache_key(tenant_id, player_id), "json")
        for player, raw in zip(chunk, await pipe.execute()):
            if raw is not None:
                snapshots[player] = parse_snapshot(raw)
    return snapshots


async def read_pool_snapshots(redis_client, pools: Iterable[tuple[str, str]]) -> dict[tuple[str, str], PoolSnapshot]:
    # One read per pool: a deployment has a few pools per brand, not millions.
    cache = RedisPoolCache(redis_client)
    snapshots: dict[tuple[str, str], PoolSnapshot] = {}
    for tenant_id, pool_id in pools:
        raw = await cache.get(tenant_id, pool_id)
        if raw is not None:
            snapshots[(tenant_id, pool_id)] = parse_pool_snapshot(raw)
    return snapshots


async def reconcile_once(pool: asyncpg.Pool, redis_client, tenant: str | None) -> Report:
    totals, records, pool_records = await read_ledger_and_records(pool)
    if tenant is not None:
        records = {k: v for k, v in records.items() if k[0] == tenant}
        pool_records = {k: v for k, v in pool_records.items() if k[0] == tenant}
        totals = {k: v for k, v in totals.items() if k[0] == tenant}
    ledger = {key: balance for key, (balance, _) in totals.items()}
    players = set(records)
    pools = set(pool_records)
    for tenant_id, account in ledger:
        parsed = parse_player_account(account)
        if parsed is not None:
            players.add((tenant_id, parsed[0]))
        pool_account = parse_pool_account(account)
        if pool_account is not None:
            pools.add((tenant_id, pool_account[0]))
    snapshots = await read_snapshots(redis_client, sorted(players))
    pool_snapshots = await read_pool_snapshots(redis_client, sorted(pools))
    return replace(compare(ledger, records, snapshots, ledger_volume(totals.values())),
                   jackpot=compare_pools(ledger, pool_records, pool_snapshots))


async def reconcile(settings: Settings, *, tenant: str | None = None, confirm_after_s: float = 1.0) -> Report:
    """Read, compare, and when something drifts, read and compare once more."""
    pool = None
    redis_client = None
    try:
        pool = await create_pool(settings.database_url, min_size=1, max_size=2)
        redis_client = connect_redis(settings.redis_url, max_connections=4)
        report = await reconcile_once(pool, redis_client, tenant)
        if report.total_drift and confirm_after_s > 0:
            await asyncio.sleep(confirm_after_s)
            report = confirm(report, await reconcile_once(pool, redis_client, tenant))
        return report
    finally:
        if pool is not None:
            await pool.close()
        if redis_client is not None:
            await redis_client.aclose()
            # The client does not own a pool it was given, so the pool is closed apart.
            await redis_client.connection_pool.disconnect()


async def run(settings: Settings, *, tenant: str | None = None, confirm_after_s: float = 1.0,
              out: TextIO = sys.stdout) -> int:
    """Reconcile, print the report, and return the exit code."""
    try:
        report = await reconcile(settings, tenant=tenant, confirm_after_s=confirm_after_s)
    except Exception as exc:  # any service down or unreadable: say so, and exit apart from drift
        traceback.print_exc(file=sys.stderr)
        print(f"ERROR: could not reconcile: {exc!r}", file=out)
        return EXIT_ERROR
    print(render(report), file=out)
    return report.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.reconcile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenant", help="reconcile one tenant only (default: every tenant)")
    parser.add_argument("--confirm-after-s", type=float, default=1.0,
                        help="pause before re-checking drifting accounts; 0 reports the first pass (default 1)")
    args = parser.parse_args(argv)
    return asyncio.run(run(load_settings(), tenant=args.tenant, confirm_after_s=args.confirm_after_s))


if __name__ == "__main__":
    sys.exit(main())
