"""The hash-chained audit log: an untouched chain verifies; any edit, removal, insertion
or reorder is found at the first position it disturbs."""
from __future__ import annotations

import dataclasses

import pytest

from app.domain.errors import InvariantViolation
from app.domain.jackpot.chain import GENESIS, ChainEntry, ChainHead, append, entry_hash, head_after, verify
from app.domain.jackpot.core import Reconfigure, Trigger, chain_entry_from_audit
from tests.unit.test_jackpot_scenarios import world


def chain(n: int = 10) -> tuple[ChainEntry, ...]:
    entries: tuple[ChainEntry, ...] = ()
    for i in range(n):
        entries = append(entries, "seed" if i % 2 else "config_changed", {"i": i, "amount_minor": 100 * i,
                                                                           "tiers": ["mini", "grand"]})
    return entries


def rehash(entry: ChainEntry) -> ChainEntry:
    """What a forger does after editing an entry: make its own hash right again."""
    return dataclasses.replace(entry, hash=entry_hash(entry.prev_hash, entry.seq, entry.kind, entry.payload))


def test_an_untouched_chain_verifies():
    entries = chain()
    assert verify(entries) is None and verify(entries, head_after(entries)) is None
    assert entries[0].prev_hash == GENESIS and entries[0].seq == 0
    assert all(b.prev_hash == a.hash for a, b in zip(entries, entries[1:]))
    assert verify(()) is None and verify((), ChainHead()) is None


@pytest.mark.parametrize("index", [0, 4, 9])
def test_an_edited_payload_is_found_at_its_entry(index):
    entries = list(chain())
    entries[index] = dataclasses.replace(entries[index], payload={**entries[index].payload, "amount_minor": 1})
    assert verify(entries) == index


def test_an_edited_and_rehashed_entry_is_found_at_the_link_after_it():
    entries = list(chain())
    entries[4] = rehash(dataclasses.replace(entries[4], payload={"i": 4, "amount_minor": 999_999}))
    assert verify(entries) == 5


def test_an_edited_kind_or_seq_is_found():
    entries = list(chain())
    entries[3] = dataclasses.replace(entries[3], kind="drop_reveal")
    assert verify(entries) == 3
    entries = list(chain())
    entries[3] = dataclasses.replace(entries[3], seq=7)
    assert verify(entries) == 3


@pytest.mark.parametrize("index", [0, 3, 8])
def test_a_removed_entry_is_found_where_it_was(index):
    entries = list(chain())
    del entries[index]
    assert verify(entries) == index


def test_a_removed_last_entry_is_found_against_the_published_head():
    entries = chain()
    head = head_after(entries)
    assert verify(entries[:-1]) is None  # the chain alone cannot know it was cut
    assert verify(entries[:-1], head) == 9
    assert verify(entries[:-3], head) == 7


def test_extra_entries_beyond_the_published_head_are_found():
    entries = chain()
    assert verify(entries, head_after(entries[:8])) == 8


@pytest.mark.parametrize("a,b", [(0, 1), (2, 3), (4, 8)])
def test_reordered_entries_are_found_at_the_first_moved_one(a, b):
    entries = list(chain())
    entries[a], entries[b] = entries[b], entries[a]
    assert verify(entries) == a


def test_an_inserted_entry_is_found():
    entries = list(chain())
    forged = rehash(ChainEntry(5, entries[4].hash, "seed", {"i": 99}, ""))
    entries.insert(5, forged)
    assert verify(entries) == 6


def test_a_chain_rewritten_end_to_end_is_found_only_against_the_head():
    original = chain()
    rewritten: tuple[ChainEntry, ...] = ()
    for entry in original:
        rewritten = append(rewritten, entry.kind, {**entry.payload, "amount_minor": 0})
    assert verify(rewritten) is None
    assert verify(rewritten, head_after(original)) == len(original) - 1


def test_payloads_must_be_plain_json_without_floats():
    with pytest.raises(InvariantViolation):
        append((), "seed", {"amount": 1.5})
    with pytest.raises(InvariantViolation):
        append((), "seed", {1: "non-string key"})
    with pytest.raises(InvariantViolation):
        append((), "seed", {"when": object()})


def test_a_payload_tampered_into_a_float_is_found_not_raised():
    entries = list(chain())
    entries[2] = dataclasses.replace(entries[2], payload={"i": 2.0})
    assert verify(entries) == 2


def test_the_pool_chain_round_trips_through_audit_records_and_verifies():
    w = world("must_drop")
    w.do(Reconfigure(contribution_bps=2_000, reason="promo"))
    while not w.contribute(bet=10_000).outcome.body["wins"]:
        pass
    kinds = [e.kind for e in w.chain]
    assert kinds[:3] == ["pool_created", "seed", "drop_commitment"]
    assert {"config_changed", "drop", "drop_reveal"} <= set(kinds)
    head = ChainHead(w.state.chain_seq, w.state.chain_hash)
    assert verify(w.chain, head) is None
    tampered = list(w.chain)
    i = kinds.index("drop")
    tampered[i] = dataclasses.replace(tampered[i], payload={**tampered[i].payload, "player_id": "mallory"})
    assert verify(tampered, head) == i


def test_audit_record_detail_carries_the_whole_entry():
    w = world()
    d = w.do(Trigger("t1", "p1", "r1", "b1", "MT"))
    assert [chain_entry_from_audit(r) for r in d.audit] == list(d.chain) == w.chain[-len(d.audit):]
