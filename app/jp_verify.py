"""Jackpot audit chain verification: `python -m app.jp_verify [--tenant T] [--pool P]
[--head SEQ:HASH] [--json] [--wait-s 5]`.

Every jackpot pool appends its creation, configuration changes, seeds, drop-point
commitments, drops and reveals to a hash chain (app.domain.jackpot.chain), stored
append-only in PostgreSQL `audit_log` as records of kind "jp_chain". This reads each
pool's records back and finds the first entry that is not where an untouched chain has
it: a wrong seq (an entry removed, inserted or moved), a broken link to the entry before
it, a hash that does not cover the content, or a record that does not carry its entry as
the pool core wrote it (another pool's, another seq's audit id, fields added). Against
the pool's published head (the next seq and the last hash: --head, else the pool's Redis
snapshot) it also finds entries cut off the end and a chain rewritten end to end; without
one, a cut at the end cannot be seen, and the report says so.

It prints one line per pool and exits 0 when every pool verifies, 1 when any pool's chain
was tampered with, 2 when it could not verify (bad arguments, a pool it cannot find, a
service down). Without --tenant it verifies every tenant named in API_KEYS; without
--pool, every pool of the tenant that has chain records or a cached snapshot.

The jackpot agent refreshes the Redis snapshot while the ledger flush is still storing the
entries, so the head may be a moment ahead of the stored chain, or behind it. A chain that
is intact in itself and disagrees with its head only at the end is therefore read again
until --wait-s runs out, and reported only if it still disagrees.

`verify_pool` is pure: records and head in, verdict out. The functions below it do the
reading."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Sequence, TextIO

from app.domain.audit import AuditRecord
from app.domain.errors import InvariantViolation
from app.domain.jackpot import chain
from app.domain.jackpot.chain import GENESIS, ChainEntry, ChainHead, entry_hash, head_after
from app.domain.jackpot.core import chain_audit_record, chain_entry_from_audit
from app.domain.jackpot.rng import verify_reveal
from config import Settings, load_settings
from config.settings import SettingsError
from storage.ports import LedgerStore, PoolCache
from storage.postgres.stores import PostgresLedgerStore, create_pool
from storage.redis.stores import RedisPoolCache, connect as connect_redis

EXIT_OK, EXIT_TAMPERED, EXIT_ERROR = 0, 1, 2

HEAD_FROM_ARGUMENT = "argument"
HEAD_FROM_SNAPSHOT = "snapshot"

CHAIN_FIELDS = tuple(f.name for f in dataclasses.fields(ChainEntry))
RECHECK_PAUSE_S = 0.2

_HEAD = re.compile(r"^(\d+):([0-9a-f]{64})$")


# ---------------------------------------------------------------- the pure verification

@dataclass(frozen=True)
class PoolVerdict:
    pool_id: str
    entries: int  # chain records read
    bad_seq: int | None  # the first position not as an untouched chain has it; None: intact
    reason: str = ""
    head: ChainHead | None = None  # the published head checked against; None: not known
    head_source: str = ""  # HEAD_FROM_ARGUMENT, HEAD_FROM_SNAPSHOT, or "" without a head
    chain_head: ChainHead | None = None  # the head the records end at, when they verify
    tail_only: bool = False  # the records verify in themselves; only the published head disagrees

    @property
    def ok(self) -> bool:
        return self.bad_seq is None


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _entry_of(record: AuditRecord) -> tuple[ChainEntry | None, str]:
    detail = record.detail
    if not isinstance(detail, dict):
        return None, "its record's detail is not an object"
    missing = [name for name in CHAIN_FIELDS if name not in detail]
    if missing:
        return None, f"its record is not a chain entry: no {', '.join(missing)}"
    return chain_entry_from_audit(record), ""


def _record_problem(pool_id: str, record: AuditRecord, entry: ChainEntry) -> str:
    """What makes the record differ from the one the pool core makes for its entry; the
    hash covers the entry only, so the record's own fields are checked against the core's
    making of them. Its time and tenant are the store's to keep and are not compared."""
    expected = chain_audit_record(record.tenant_id, pool_id, entry, record.created_at_ms)
    if record.kind != expected.kind:
        return f"its record is of kind {record.kind!r}, not {expected.kind!r}"
    if record.detail.get("pool_id") != pool_id:
        return f"its record names pool {record.detail.get('pool_id')!r}"
    if record.audit_id != expected.audit_id:
        return f"its record's audit_id is {record.audit_id!r}, not {expected.audit_id!r}"
    if record.detail != expected.detail:
        extra = sorted(set(record.detail) - set(expected.detail))
        if extra:
            return f"its record carries fields outside the entry: {', '.join(extra)}"
        return "its record's detail is not the entry the pool core wrote"
    if record.code != expected.code:
        return f"its record's code {record.code!r} is not the entry's kind {entry.kind!r}"
    if record.player_id != expected.player_id:
        return f"its record names player {record.player_id!r}"
    return ""


def _chain_reason(entries: Sequence[ChainEntry], index: int, head: ChainHead | None) -> str:
    """Why chain.verify stopped at `index`, in words."""
    if index < len(entries):
        entry = entries[index]
        if entry.seq != index:
            if isinstance(entry.seq, int) and not isinstance(entry.seq, bool) and entry.seq > index:
                return f"entry {entry.seq} is stored where entry {index} belongs: entry {index} is missing"
            return f"an entry naming seq {entry.seq!r} is stored where entry {index} belongs: repeated or moved"
        if entry.prev_hash != (entries[index - 1].hash if index else GENESIS):
            if index == 0:
                return "it does not start from the genesis hash"
            return f"it does not link to entry {index - 1}: an entry before it was rewritten, inserted or moved"
        try:
            expected = entry_hash(entry.prev_hash, entry.seq, entry.kind, entry.payload)
        except InvariantViolation:
            return "its content is not canonical JSON (a float, say): edited"
        if entry.hash != expected:
            return "its hash does not match its content: edited"
    # Every stored entry verifies: what disagrees is the published head.
    if head is not None and head.seq > len(entries):
        return (f"the published head is at seq {head.seq}: "
                f"{_plural(head.seq - len(entries), 'entry', 'entries')} missing at the end")
    if head is not None and head.seq < len(entries):
        return (f"{_plural(len(entries) - head.seq, 'entry is', 'entries are')} stored beyond "
                f"the published head at seq {head.seq}")
    return "its hash is not the published head's: the chain was rewritten"


def _reveal_problem(entries: Sequence[ChainEntry]) -> tuple[int, str] | None:
    """A chain whose links hold can still record an unfair drop: every revealed drop point
    must be the one committed to before, inside the committed range, and a must-drop win
    must pay exactly the point."""
    commitments: dict[tuple[str, int], dict] = {}
    drops: dict[str, dict] = {}
    for index, entry in enumerate(entries):
        payload = entry.payload
        if entry.kind == "drop_commitment":
            commitments[(payload.get("tier"), payload.get("cycle"))] = payload
        elif entry.kind == "drop":
            drops[payload.get("trigger_id")] = payload
        elif entry.kind == "drop_reveal":
            committed = commitments.get((payload.get("tier"), payload.get("cycle")))
            point, nonce = payload.get("point_minor"), payload.get("nonce")
            if committed is None:
                return index, "a drop point is revealed that was never committed to"
            if not (isinstance(point, int) and isinstance(nonce, str)
                    and verify_reveal(committed["commitment"], point, nonce)):
                return index, "the revealed drop point does not match its commitment"
            if not committed["drop_min_minor"] <= point <= committed["drop_max_minor"]:
                return index, "the revealed drop point is outside its committed range"
            drop = drops.get(payload.get("trigger_id"))
            if drop is None or (drop.get("reason") == "must_drop" and drop.get("amount_minor") != point):
                return index, "the must-drop win does not pay the revealed point"
    return None


def verify_pool(pool_id: str, records: Sequence[AuditRecord], head: ChainHead | None,
                head_source: str = "") -> PoolVerdict:
    """Verify one pool's chain records, in seq order as LedgerStore.chain_records returns
    them, against its published head (None: not known)."""
    entries: list[ChainEntry] = []
    record_bad: tuple[int, str] | None = None
    for index, record in enumerate(records):
        entry, problem = _entry_of(record)
        if entry is None:
            record_bad = record_bad or (index, problem)
            break
        entries.append(entry)
        problem = _record_problem(pool_id, record, entry)
        if problem and record_bad is None:
            record_bad = (index, problem)
    complete = len(entries) == len(records)
    # Past a record that holds no entry the chain cannot go on, so only the entries before
    # it are verified, and not against the head.
    checked_head = head if complete else None
    chain_bad = chain.verify(entries, checked_head)
    base = PoolVerdict(pool_id, len(records), None, head=head, head_source=head_source if head is not None else "")
    if chain_bad is None and record_bad is None:
        unfair = _reveal_problem(entries)
        if unfair is not None:
            return dataclasses.replace(base, bad_seq=unfair[0], reason=unfair[1])
        return dataclasses.replace(base, chain_head=head_after(entries))
    # The chain's own reason wins a tie: the record of an entry that is out of place is
    # usually out of place too, and the chain says why.
    if chain_bad is not None and (record_bad is None or chain_bad <= record_bad[0]):
        tail_only = record_bad is None and chain.verify(entries) is None
        return dataclasses.replace(base, bad_seq=chain_bad, reason=_chain_reason(entries, chain_bad, checked_head),
                                   tail_only=tail_only)
    index, problem = record_bad
    return dataclasses.replace(base, bad_seq=index, reason=problem)


@dataclass(frozen=True)
class Report:
    # (tenant_id, the verdicts of its pools, ordered by pool id), per tenant verified
    tenants: tuple[tuple[str, tuple[PoolVerdict, ...]], ...]

    @property
    def verdicts(self) -> list[tuple[str, PoolVerdict]]:
        return [(tenant_id, v) for tenant_id, verdicts in self.tenants for v in verdicts]

    @property
    def tampered(self) -> int:
        return sum(1 for _, v in self.verdicts if not v.ok)

    @property
    def exit_code(self) -> int:
        return EXIT_TAMPERED if self.tampered else EXIT_OK


def parse_head(text: str) -> ChainHead:
    """--head SEQ:HASH, as a pool read shows chain_head: the next seq and the last hash."""
    match = _HEAD.match(text.strip().lower())
    if match is None:
        raise ValueError(f"a head is SEQ:HASH (a seq and 64 hex digits), got {text!r}")
    return ChainHead(int(match.group(1)), match.group(2))


def head_from_snapshot(raw: str | bytes | None) -> ChainHead | None:
    """The chain_head of a pool snapshot (core.pool_view as JSON); None when there is none."""
    if raw is None:
        return None
    try:
        head = json.loads(raw)["chain_head"]
        seq, last = head["seq"], head["hash"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(last, str):
        return None
    return ChainHead(seq, last)


def render_line(verdict: PoolVerdict) -> str:
    if not verdict.ok:
        return f"pool {verdict.pool_id}: TAMPERED at entry {verdict.bad_seq} ({verdict.reason})"
    end = verdict.chain_head
    line = f"pool {verdict.pool_id}: ok, {_plural(verdict.entries, 'entry', 'entries')}, head {end.seq}:{end.hash}"
    if verdict.head is None:
        line += " (no published head: entries cut off the end cannot be detected)"
    return line


def render(report: Report) -> str:
    lines = []
    for tenant_id, verdicts in report.tenants:
        if verdicts:
            lines.append(f"tenant {tenant_id}: {_plural(len(verdicts), 'pool', 'pools')}")
        else:
            lines.append(f"tenant {tenant_id}: no jackpot pools with chain records")
        lines.extend(render_line(v) for v in verdicts)
    total = len(report.verdicts)
    if report.tampered:
        lines.append(f"TAMPERED: {report.tampered} of {_plural(total, 'pool', 'pools')}")
    else:
        lines.append(f"OK: {_plural(total, 'pool', 'pools')} verified")
    return "\n".join(lines)


def _head_json(head: ChainHead | None) -> dict | None:
    return None if head is None else {"seq": head.seq, "hash": head.hash}


def report_json(report: Report) -> dict:
    return {
        "ok": report.exit_code == EXIT_OK,
        "tenants": [tenant_id for tenant_id, _ in report.tenants],
        "pools": [
            {
                "tenant_id": tenant_id, "pool_id": v.pool_id, "ok": v.ok, "entries": v.entries,
                "bad_seq": v.bad_seq, "reason": v.reason, "chain_head": _head_json(v.chain_head),
                "published_head": _head_json(v.head), "head_source": v.head_source or None,
            }
            for tenant_id, v in report.verdicts
        ],
    }


def configured_tenants(settings: Settings) -> list[str]:
    """Every tenant API_KEYS names, in its order: the tenants that can have pools."""
    return list(dict.fromkeys(key.tenant_id for key in settings.api_keys))


# ---------------------------------------------------------------- the I/O shell

class VerifyError(Exception):
    """Raised when a named pool has nothing to verify."""


async def cached_pools(cache: PoolCache, tenant_id: str) -> list[str]:
    """Pools with a snapshot, so a pool whose every record is gone is still checked."""
    pools = []
    for raw in await cache.list(tenant_id):
        try:
            pool_id = json.loads(raw)["pool_id"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(pool_id, str) and head_from_snapshot(raw) is not None:
            pools.append(pool_id)
    return pools


async def check_pool(store: LedgerStore, cache: PoolCache | None, tenant_id: str, pool_id: str,
                     head: ChainHead | None, wait_s: float) -> PoolVerdict:
    """Read and verify one pool, reading again while only its end disagrees with the head."""
    deadline = time.monotonic() + wait_s
    while True:
        if head is not None:
            published, source = head, HEAD_FROM_ARGUMENT
        else:
            published = None if cache is None else head_from_snapshot(await cache.get(tenant_id, pool_id))
            source = HEAD_FROM_SNAPSHOT
        verdict = verify_pool(pool_id, await store.chain_records(tenant_id, pool_id), published, source)
        if not verdict.tail_only or time.monotonic() >= deadline:
            return verdict
        await asyncio.sleep(RECHECK_PAUSE_S)


async def verify_tenant(store: LedgerStore, cache: PoolCache | None, tenant_id: str, *, pool_id: str | None = None,
                        head: ChainHead | None = None, wait_s: float = 5.0) -> tuple[PoolVerdict, ...]:
    if pool_id is not None:
        verdict = await check_pool(store, cache, tenant_id, pool_id, head, wait_s)
        if verdict.entries == 0 and verdict.head is None:
            raise VerifyError(f"pool {pool_id} of tenant {tenant_id} has no chain records and no published head")
        return (verdict,)
    pools = set(await store.chain_pools(tenant_id))
    if cache is not None:
        pools.update(await cached_pools(cache, tenant_id))
    return tuple([await check_pool(store, cache, tenant_id, p, None, wait_s) for p in sorted(pools)])


async def verify(settings: Settings, tenants: Sequence[str], *, pool_id: str | None = None,
                 head: ChainHead | None = None, wait_s: float = 5.0) -> Report:
    db = None
    redis_client = None
    try:
        db = await create_pool(settings.database_url, min_size=1, max_size=2)
        store = PostgresLedgerStore(db)
        cache = None
        if head is None:
            redis_client = connect_redis(settings.redis_url, max_connections=2)
            cache = RedisPoolCache(redis_client)
        results = []
        for tenant_id in tenants:
            results.append((tenant_id, await verify_tenant(store, cache, tenant_id, pool_id=pool_id, head=head,
                                                           wait_s=wait_s)))
        return Report(tuple(results))
    finally:
        if db is not None:
            await db.close()
        if redis_client is not None:
            await redis_client.aclose()
            # The client does not own a pool it was given, so the pool is closed apart.
            await redis_client.connection_pool.disconnect()


def _print_error(message: str, as_json: bool, out: TextIO) -> None:
    if as_json:
        print(json.dumps({"ok": False, "error": message}), file=out)
    else:
        print(f"ERROR: {message}", file=out)


async def run(settings: Settings, tenants: Sequence[str], *, pool_id: str | None = None,
              head: ChainHead | None = None, as_json: bool = False, wait_s: float = 5.0,
              out: TextIO = sys.stdout) -> int:
    """Verify, print the report, and return the exit code."""
    try:
        report = await verify(settings, tenants, pool_id=pool_id, head=head, wait_s=wait_s)
    except VerifyError as exc:
        _print_error(str(exc), as_json, out)
        return EXIT_ERROR
    except Exception as exc:  # a service down or unreadable: say so, and exit apart from tampering
        traceback.print_exc(file=sys.stderr)
        _print_error(f"could not verify: {exc!r}", as_json, out)
        return EXIT_ERROR
    print(json.dumps(report_json(report), indent=2) if as_json else render(report), file=out)
    return report.exit_code


def _head_argument(text: str) -> ChainHead:
    try:
        return parse_head(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds_argument(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.jp_verify", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenant", help="verify one tenant (default: every tenant API_KEYS names)")
    parser.add_argument("--pool", help="verify one pool (default: every pool of the tenant)")
    parser.add_argument("--head", type=_head_argument, metavar="SEQ:HASH",
                        help="the pool's published chain head to check against (default: its Redis snapshot's)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--wait-s", type=_seconds_argument, default=5.0,
                        help="how long to keep re-reading a pool whose chain disagrees with its head only at the "
                             "end, as while its newest entries are being stored (default 5)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        _print_error(str(exc), args.json, sys.stdout)
        return EXIT_ERROR
    tenants = [args.tenant] if args.tenant else configured_tenants(settings)
    if args.head is not None and args.pool is None:
        parser.error("--head is one pool's head: name the pool with --pool")
    if args.pool is not None and len(tenants) != 1:
        parser.error("API_KEYS names several tenants: name the pool's with --tenant")
    return asyncio.run(run(settings, tenants, pool_id=args.pool, head=args.head, as_json=args.json,
                           wait_s=args.wait_s))


if __name__ == "__main__":
    sys.exit(main())
