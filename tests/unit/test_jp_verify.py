"""The jackpot chain verifier on a real pool's chain, made by the pool core: an untouched
chain verifies, and every kind of tampering is found at the entry it first disturbs. The
I/O shell runs here against the in-memory store and pool cache; tests/integration/
test_jp_verify.py runs the command against PostgreSQL."""
from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re

import pytest

from app.domain.audit import AuditRecord
from app.domain.jackpot.chain import GENESIS, ChainHead, entry_hash
from app.domain.jackpot.core import Reconfigure, pool_view
from app.domain.jackpot.state import PoolState
from app.jp_verify import (
    EXIT_ERROR, EXIT_OK, EXIT_TAMPERED, HEAD_FROM_ARGUMENT, HEAD_FROM_SNAPSHOT, PoolVerdict, Report, VerifyError,
    check_pool, head_from_snapshot, main, parse_head, render, render_line, report_json, run, verify_pool,
    verify_tenant,
)
from config import Settings
from storage.memory.stores import MemoryLedgerStore, MemoryPoolCache
from storage.ports import CHAIN_AUDIT_POOL_PATTERN, chain_audit_prefix
from tests.stack import free_port
from tests.unit.test_jackpot_scenarios import World, create

POOL = "pool1"


def pool_chain(pool_id: str = POOL, tenant_id: str = "dev") -> tuple[list[AuditRecord], ChainHead, PoolState]:
    """A must-drop pool created, reconfigured and played until it drops and reseeds: its
    chain records as the agent emits them (decision.audit), its head and its record."""
    w = World(pool_id)
    records = list(w.do(create("must_drop", pool_id=pool_id)).audit)
    records += w.do(Reconfigure(contribution_bps=2_000, reason="promo")).audit
    while True:
        decision = w.contribute(bet=10_000)
        records += decision.audit
        if decision.outcome.body["wins"]:
            break
    records = [dataclasses.replace(r, tenant_id=tenant_id) for r in records]
    return records, ChainHead(w.state.chain_seq, w.state.chain_hash), w.state


RECORDS, HEAD, STATE = pool_chain()
N = len(RECORDS)


def edit(record: AuditRecord, **detail) -> AuditRecord:
    """The record with its detail changed, as an UPDATE of the stored JSON would."""
    return dataclasses.replace(record, detail={**record.detail, **detail})


def renumber(record: AuditRecord, seq: int) -> AuditRecord:
    """What a careful forger does to move an entry: both the entry's seq and its audit id."""
    return dataclasses.replace(edit(record, seq=seq), audit_id=f"jp:{POOL}:chain:{seq}")


def by_seq(records: list[AuditRecord]) -> list[AuditRecord]:
    """In the order LedgerStore.chain_records reads them back."""
    return sorted(records, key=lambda r: r.detail["seq"])


def test_the_scenario_chain_covers_every_kind_the_verifier_must_protect():
    kinds = [r.code for r in RECORDS]
    assert kinds[:3] == ["pool_created", "seed", "drop_commitment"]
    assert {"config_changed", "drop", "drop_reveal"} <= set(kinds)
    assert [r.audit_id for r in RECORDS] == [f"jp:{POOL}:chain:{i}" for i in range(N)]
    assert HEAD.seq == N and pool_view(STATE)["chain_head"] == {"seq": HEAD.seq, "hash": HEAD.hash}


def test_the_stores_select_a_pools_records_by_the_audit_ids_the_core_gives_them():
    for pool_id in (POOL, "grand.EU-2.x"):
        records, _, _ = pool_chain(pool_id)
        for record in records:
            assert record.audit_id == chain_audit_prefix(pool_id) + str(record.detail["seq"])
            assert re.match(CHAIN_AUDIT_POOL_PATTERN, record.audit_id).group(1) == pool_id


def test_an_untouched_chain_verifies_against_its_head():
    verdict = verify_pool(POOL, RECORDS, HEAD, HEAD_FROM_SNAPSHOT)
    assert verdict == PoolVerdict(POOL, N, None, head=HEAD, head_source=HEAD_FROM_SNAPSHOT, chain_head=HEAD)
    assert verdict.ok
    assert render_line(verdict) == f"pool {POOL}: ok, {N} entries, head {HEAD.seq}:{HEAD.hash}"


def test_without_a_head_the_chain_verifies_but_says_a_cut_end_cannot_be_seen():
    verdict = verify_pool(POOL, RECORDS[:-2], None)
    assert verdict.ok and verdict.head is None and verdict.head_source == ""
    assert verdict.chain_head == ChainHead(N - 2, RECORDS[-3].detail["hash"])
    assert render_line(verdict).endswith("(no published head: entries cut off the end cannot be detected)")


def test_an_empty_pool_with_a_fresh_head_verifies():
    assert verify_pool(POOL, [], ChainHead()).ok
    assert verify_pool(POOL, [], None).ok


@pytest.mark.parametrize("index", [0, 3, 4, N - 1])
def test_an_edited_payload_is_found_at_its_entry(index):
    records = list(RECORDS)
    payload = {**records[index].detail["payload"], "at_ms": 1}
    records[index] = edit(records[index], payload=payload)
    verdict = verify_pool(POOL, records, HEAD)
    assert (verdict.bad_seq, verdict.reason) == (index, "its hash does not match its content: edited")
    assert not verdict.tail_only
    assert render_line(verdict) == f"pool {POOL}: TAMPERED at entry {index} (its hash does not match its content: edited)"


def test_the_drop_entry_edited_to_another_winner_is_found():
    records = list(RECORDS)
    i = [r.code for r in records].index("drop")
    records[i] = edit(records[i], payload={**records[i].detail["payload"], "player_id": "mallory"})
    assert verify_pool(POOL, records, HEAD).bad_seq == i


def test_an_edited_hash_is_found_at_its_entry():
    records = list(RECORDS)
    records[2] = edit(records[2], hash="f" * 64)
    verdict = verify_pool(POOL, records, HEAD)
    assert (verdict.bad_seq, verdict.reason) == (2, "its hash does not match its content: edited")


def test_an_edited_and_rehashed_entry_is_found_at_the_link_after_it():
    records = list(RECORDS)
    d = records[3].detail
    payload = {**d["payload"], "reason": "forged"}
    records[3] = edit(records[3], payload=payload, hash=entry_hash(d["prev_hash"], d["seq"], d["kind"], payload))
    verdict = verify_pool(POOL, records, HEAD)
    assert verdict.bad_seq == 4
    assert verdict.reason.startswith("it does not link to entry 3")


def test_a_payload_tampered_into_a_float_is_found_not_raised():
    records = list(RECORDS)
    records[1] = edit(records[1], payload={**records[1].detail["payload"], "at_ms": 1.5})
    verdict = verify_pool(POOL, records, HEAD)
    assert (verdict.bad_seq, verdict.reason) == (1, "its content is not canonical JSON (a float, say): edited")


@pytest.mark.parametrize("index", [0, 1, 4, N - 2])
def test_a_removed_record_is_found_where_it_was(index):
    records = RECORDS[:index] + RECORDS[index + 1:]
    for head in (HEAD, None):
        verdict = verify_pool(POOL, records, head)
        assert verdict.bad_seq == index
        assert verdict.reason == f"entry {index + 1} is stored where entry {index} belongs: entry {index} is missing"
        assert not verdict.tail_only


@pytest.mark.parametrize("a,b", [(0, 1), (2, 3), (3, N - 1)])
def test_renumbered_entries_are_found_at_the_first_moved_one(a, b):
    records = list(RECORDS)
    records[a], records[b] = renumber(records[a], b), renumber(records[b], a)
    verdict = verify_pool(POOL, by_seq(records), HEAD)
    assert verdict.bad_seq == a
    assert verdict.reason in ("it does not start from the genesis hash",
                              f"it does not link to entry {a - 1}: an entry before it was rewritten, inserted or moved")


def test_records_read_out_of_seq_order_are_found():
    records = list(RECORDS)
    records[2], records[5] = records[5], records[2]
    verdict = verify_pool(POOL, records, HEAD)
    assert verdict.bad_seq == 2
    assert verdict.reason == "entry 5 is stored where entry 2 belongs: entry 2 is missing"


def test_a_repeated_seq_is_found():
    records = list(RECORDS)
    records.insert(4, edit(records[3], payload={"forged": True}))
    verdict = verify_pool(POOL, records, HEAD)
    assert verdict.bad_seq == 4
    assert verdict.reason.startswith("an entry naming seq 3 is stored where entry 4 belongs")


def test_a_seq_tampered_into_text_is_found():
    records = list(RECORDS)
    records[5] = edit(records[5], seq="5")
    assert verify_pool(POOL, records, HEAD).bad_seq == 5


@pytest.mark.parametrize("cut", [1, 2, N - 1])
def test_a_truncated_tail_is_found_against_the_head_only(cut):
    records = RECORDS[:-cut]
    verdict = verify_pool(POOL, records, HEAD, HEAD_FROM_ARGUMENT)
    assert verdict.bad_seq == N - cut
    assert verdict.reason == (f"the published head is at seq {N}: "
                              f"{cut} {'entry' if cut == 1 else 'entries'} missing at the end")
    assert verdict.tail_only and verdict.head_source == HEAD_FROM_ARGUMENT
    assert verify_pool(POOL, records, None).ok


def test_every_record_gone_is_found_against_the_head():
    verdict = verify_pool(POOL, [], HEAD)
    assert verdict.bad_seq == 0 and verdict.tail_only
    assert verdict.reason == f"the published head is at seq {N}: {N} entries missing at the end"


def test_entries_beyond_the_head_are_reported_as_disagreeing_with_it():
    stale = ChainHead(N - 2, RECORDS[N - 3].detail["hash"])
    verdict = verify_pool(POOL, RECORDS, stale)
    assert verdict.bad_seq == N - 2 and verdict.tail_only
    assert verdict.reason == f"2 entries are stored beyond the published head at seq {N - 2}"


def test_a_chain_rewritten_end_to_end_is_found_against_the_head():
    records, prev = [], GENESIS
    for r in RECORDS:
        d = r.detail
        payload = {**d["payload"], "at_ms": 0}
        digest = entry_hash(prev, d["seq"], d["kind"], payload)
        records.append(edit(r, prev_hash=prev, payload=payload, hash=digest))
        prev = digest
    assert verify_pool(POOL, records, None).ok
    verdict = verify_pool(POOL, records, HEAD)
    assert verdict.bad_seq == N - 1 and verdict.tail_only
    assert verdict.reason == "its hash is not the published head's: the chain was rewritten"


def rehashed(records: list[AuditRecord], change) -> tuple[list[AuditRecord], ChainHead]:
    """The chain as an insider with write access would forge it: payloads changed by
    `change(kind, payload)`, every link re-hashed, and the published head moved along."""
    out, prev = [], GENESIS
    for r in records:
        d = r.detail
        payload = change(d["kind"], dict(d["payload"]))
        digest = entry_hash(prev, d["seq"], d["kind"], payload)
        out.append(edit(r, prev_hash=prev, payload=payload, hash=digest))
        prev = digest
    return out, ChainHead(len(out), prev)


@pytest.mark.parametrize("forgery, reason", [
    (lambda kind, p: {**p, "point_minor": p["point_minor"] + 1} if kind == "drop_reveal" else p,
     "the revealed drop point does not match its commitment"),
    (lambda kind, p: {**p, "drop_max_minor": p["drop_min_minor"]} if kind == "drop_commitment" else p,
     "the revealed drop point is outside its committed range"),
    (lambda kind, p: {**p, "amount_minor": p["amount_minor"] - 1} if kind == "drop" else p,
     "the must-drop win does not pay the revealed point"),
])
def test_a_consistently_rehashed_chain_with_an_unfair_drop_is_found(forgery, reason):
    assert verify_pool(POOL, *rehashed(RECORDS, lambda kind, p: p)).ok
    records, head = rehashed(RECORDS, forgery)
    verdict = verify_pool(POOL, records, head)
    assert not verdict.ok and verdict.reason == reason
    assert records[verdict.bad_seq].code == "drop_reveal"


def test_a_record_of_another_pool_is_found():
    other, _, _ = pool_chain("pool2")
    records = list(RECORDS)
    records[3] = other[3]
    verdict = verify_pool(POOL, records, HEAD)
    assert verdict.bad_seq == 3
    # Its entry does not link into this chain; the chain says so before the record does.
    assert verdict.reason == "it does not link to entry 2: an entry before it was rewritten, inserted or moved"
    moved = list(RECORDS)
    moved[3] = edit(moved[3], pool_id="pool2")
    verdict = verify_pool(POOL, moved, HEAD)
    assert (verdict.bad_seq, verdict.reason) == (3, "its record names pool 'pool2'")


def test_an_audit_id_naming_another_seq_or_pool_is_found():
    for audit_id in (f"jp:{POOL}:chain:7", "jp:pool2:chain:4", "refusal-1"):
        records = list(RECORDS)
        records[4] = dataclasses.replace(records[4], audit_id=audit_id)
        verdict = verify_pool(POOL, records, HEAD)
        assert (verdict.bad_seq, verdict.reason) == (4, f"its record's audit_id is {audit_id!r}, "
                                                        f"not 'jp:{POOL}:chain:4'")


def test_record_fields_outside_the_hash_are_checked_against_the_core():
    records = list(RECORDS)
    records[2] = edit(records[2], note="approved by mallory")
    verdict = verify_pool(POOL, records, HEAD)
    assert (verdict.bad_seq, verdict.reason) == (2, "its record carries fields outside the entry: note")
    records = list(RECORDS)
    records[6] = dataclasses.replace(records[6], code="config_changed")
    assert verify_pool(POOL, records, HEAD).bad_seq == 6
    records = list(RECORDS)
    records[6] = dataclasses.replace(records[6], player_id="p1")
    assert verify_pool(POOL, records, HEAD).bad_seq == 6


def test_a_record_that_holds_no_entry_is_found_and_stops_the_chain_there():
    records = list(RECORDS)
    records[5] = dataclasses.replace(records[5], detail={k: v for k, v in records[5].detail.items() if k != "hash"})
    verdict = verify_pool(POOL, records, HEAD)
    assert (verdict.bad_seq, verdict.reason) == (5, "its record is not a chain entry: no hash")
    records[5] = dataclasses.replace(records[5], detail=["not", "an", "object"])
    assert verify_pool(POOL, records, HEAD).bad_seq == 5
    # An earlier break, in the chain or in a record, is still reported first.
    chain_broken = list(records)
    chain_broken[1] = edit(chain_broken[1], kind="drop")
    assert verify_pool(POOL, chain_broken, HEAD).bad_seq == 1
    record_broken = list(records)
    record_broken[2] = dataclasses.replace(record_broken[2], player_id="p1")
    verdict = verify_pool(POOL, record_broken, HEAD)
    assert (verdict.bad_seq, verdict.reason) == (2, "its record names player 'p1'")


def test_parse_head_and_snapshot_heads():
    assert parse_head(f"{HEAD.seq}:{HEAD.hash}") == HEAD
    assert parse_head(f" {HEAD.seq}:{HEAD.hash.upper()} ") == HEAD
    for bad in ("", "8", f"-1:{HEAD.hash}", f"8:{HEAD.hash[:-1]}", f"x:{HEAD.hash}", f"8:{'g' * 64}"):
        with pytest.raises(ValueError):
            parse_head(bad)
    assert head_from_snapshot(json.dumps(pool_view(STATE))) == HEAD
    assert head_from_snapshot(json.dumps(pool_view(STATE)).encode()) == HEAD
    for raw in (None, "", "not json", "[]", json.dumps({"pool_id": POOL, "exists": False}),
                json.dumps({"chain_head": {"seq": "8", "hash": HEAD.hash}}),
                json.dumps({"chain_head": {"seq": True, "hash": HEAD.hash}})):
        assert head_from_snapshot(raw) is None


def test_render_and_json_of_a_report():
    other, other_head, _ = pool_chain("pool2")
    tampered = verify_pool("pool2", other[:-1], other_head, HEAD_FROM_SNAPSHOT)
    m = len(other)
    intact = verify_pool(POOL, RECORDS, HEAD, HEAD_FROM_SNAPSHOT)
    report = Report((("dev", (intact, tampered)), ("empty", ())))
    assert report.exit_code == EXIT_TAMPERED
    assert render(report).splitlines() == [
        "tenant dev: 2 pools",
        f"pool {POOL}: ok, {N} entries, head {HEAD.seq}:{HEAD.hash}",
        f"pool pool2: TAMPERED at entry {m - 1} (the published head is at seq {m}: 1 entry missing at the end)",
        "tenant empty: no jackpot pools with chain records",
        "TAMPERED: 1 of 2 pools",
    ]
    data = report_json(report)
    assert data["ok"] is False and data["tenants"] == ["dev", "empty"]
    assert data["pools"][0] == {
        "tenant_id": "dev", "pool_id": POOL, "ok": True, "entries": N, "bad_seq": None, "reason": "",
        "chain_head": {"seq": HEAD.seq, "hash": HEAD.hash}, "published_head": {"seq": HEAD.seq, "hash": HEAD.hash},
        "head_source": "snapshot",
    }
    assert data["pools"][1]["bad_seq"] == m - 1 and data["pools"][1]["chain_head"] is None
    assert render(Report((("dev", (intact,)),))).splitlines()[-1] == "OK: 1 pool verified"
    assert Report((("dev", ()),)).exit_code == EXIT_OK


# ---------------------------------------------------------------- the shell, on the memory adapters

async def stores_with(*chains: tuple[str, list[AuditRecord]]) -> MemoryLedgerStore:
    store = MemoryLedgerStore()
    for _, records in chains:
        await store.append([], {}, "test", audit=records)
    return store


async def test_a_tenant_is_verified_pool_by_pool_with_heads_from_the_snapshots():
    other, other_head, other_state = pool_chain("pool2")
    store = await stores_with((POOL, RECORDS), ("pool2", other[:-1]))
    cache = MemoryPoolCache()
    await cache.put("dev", POOL, STATE.version, json.dumps(pool_view(STATE)), 30)
    await cache.put("dev", "pool2", other_state.version, json.dumps(pool_view(other_state)), 30)
    verdicts = await verify_tenant(store, cache, "dev", wait_s=0)
    assert [(v.pool_id, v.bad_seq, v.head_source) for v in verdicts] == [
        (POOL, None, HEAD_FROM_SNAPSHOT), ("pool2", len(other) - 1, HEAD_FROM_SNAPSHOT)]
    assert await verify_tenant(store, cache, "elsewhere", wait_s=0) == ()


async def test_a_cached_pool_whose_records_are_all_gone_is_found():
    store = await stores_with()
    cache = MemoryPoolCache()
    await cache.put("dev", POOL, STATE.version, json.dumps(pool_view(STATE)), 30)
    [verdict] = await verify_tenant(store, cache, "dev", wait_s=0)
    assert verdict.bad_seq == 0 and verdict.entries == 0


async def test_a_named_pool_with_nothing_to_verify_is_an_error():
    with pytest.raises(VerifyError):
        await verify_tenant(await stores_with(), MemoryPoolCache(), "dev", pool_id="nowhere", wait_s=0)
    [verdict] = await verify_tenant(await stores_with((POOL, RECORDS)), None, "dev", pool_id=POOL, head=HEAD,
                                    wait_s=0)
    assert verdict.ok and verdict.head_source == HEAD_FROM_ARGUMENT


class LaggingStore(MemoryLedgerStore):
    """Serves the last `lag` entries only from the `reads`-th read on, as while the ledger
    flush is still storing the newest entries the snapshot already counts."""

    def __init__(self, lag: int, reads: int) -> None:
        super().__init__()
        self.lag, self.reads, self.calls = lag, reads, 0

    async def chain_records(self, tenant_id: str, pool_id: str) -> list[AuditRecord]:
        self.calls += 1
        records = await super().chain_records(tenant_id, pool_id)
        return records if self.calls >= self.reads else records[:-self.lag]


async def test_entries_still_being_stored_are_waited_for_not_reported():
    store = LaggingStore(lag=2, reads=3)
    await store.append([], {}, "test", audit=RECORDS)
    verdict = await check_pool(store, None, "dev", POOL, HEAD, wait_s=5)
    assert verdict.ok and store.calls == 3


async def test_a_truncation_is_reported_once_the_wait_runs_out():
    store = LaggingStore(lag=2, reads=1_000)
    await store.append([], {}, "test", audit=RECORDS)
    started = asyncio.get_running_loop().time()
    verdict = await check_pool(store, None, "dev", POOL, HEAD, wait_s=0.5)
    assert verdict.bad_seq == N - 2 and store.calls >= 2
    assert asyncio.get_running_loop().time() - started >= 0.5
    # Tampering inside the chain is reported at once, without waiting.
    store = LaggingStore(lag=2, reads=1_000)
    await store.append([], {}, "test", audit=RECORDS[:3] + RECORDS[4:])
    assert (await check_pool(store, None, "dev", POOL, HEAD, wait_s=60)).bad_seq == 3 and store.calls == 1


# ---------------------------------------------------------------- errors and usage

async def test_an_unreachable_database_is_an_error_not_tampering():
    settings = Settings.from_env({"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"})
    out = io.StringIO()
    assert await run(settings, ["dev"], out=out) == EXIT_ERROR
    assert out.getvalue().startswith("ERROR: could not verify")
    out = io.StringIO()
    assert await run(settings, ["dev"], as_json=True, out=out) == EXIT_ERROR
    assert json.loads(out.getvalue())["ok"] is False


@pytest.mark.parametrize("argv", [["--head", "nonsense", "--pool", POOL], ["--head", f"1:{'a' * 64}"],
                                  ["--wait-s", "-1"], ["--unknown"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == EXIT_ERROR
