"""The ledger flush acknowledges a message only after its rows are committed."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from agents.ledger_flush import CONSUMER_NAME, flush_batch, run_ledger_flush
from app.domain.ledger import Posting
from app.messages import encode_ledger_batch
from storage.memory.stores import MemoryLedgerStore


@dataclass
class Message:
    topic: str
    partition: int
    offset: int


@dataclass
class Event:
    value: bytes
    message: Message


def posting(op: str, leg: int = 0) -> Posting:
    return Posting("dev", op, leg, "system:PSP_SETTLEMENT:sandbox:EUR", "player:p1:CASH:EUR", 100, "EUR", "deposit", 1)


def event(op: str, offset: int, partition: int = 0) -> Event:
    return Event(encode_ledger_batch([posting(op, 0), posting(op, 1)]), Message("ledger.postings", partition, offset))


class FlakyStore(MemoryLedgerStore):
    """Fails the first `failures` appends, as PostgreSQL does while it restarts."""

    def __init__(self, failures: int, log: list) -> None:
        super().__init__()
        self.failures = failures
        self.log = log

    async def append(self, postings, positions, consumer, audit=()):
        if self.failures:
            self.failures -= 1
            self.log.append("append failed")
            raise ConnectionError("PostgreSQL is restarting")
        added = await super().append(postings, positions, consumer, audit=audit)
        self.log.append(f"committed {added}")
        return added


class FakeStream:
    def __init__(self, batches, log: list) -> None:
        self.batches = batches
        self.log = log

    async def noack_take(self, max_, within):
        for batch in self.batches:
            yield batch

    async def ack(self, event) -> None:
        self.log.append(f"ack {event.message.offset}")


async def test_acks_follow_the_commit_and_failures_are_retried():
    log: list[str] = []
    store = FlakyStore(failures=2, log=log)
    stream = FakeStream([[event("op1", 0), event("op2", 1)]], log)

    async def factory():
        return store

    await asyncio.wait_for(run_ledger_flush(stream, factory, 100, 0.01), 10)
    assert log == ["append failed", "append failed", "committed 4", "ack 0", "ack 1"]
    assert await store.positions(CONSUMER_NAME) == {("ledger.postings", 0): 2}


async def test_a_redelivered_batch_adds_no_rows():
    store = MemoryLedgerStore()
    batch = [event("op1", 0), event("op2", 1, partition=3)]
    assert await flush_batch(store, batch) == 4
    assert await flush_batch(store, batch) == 0
    assert await store.positions(CONSUMER_NAME) == {("ledger.postings", 0): 1, ("ledger.postings", 3): 2}


async def test_cancelled_while_retrying_acks_nothing():
    log: list[str] = []
    store = FlakyStore(failures=10**6, log=log)
    stream = FakeStream([[event("op1", 0)]], log)

    async def factory():
        return store

    task = asyncio.create_task(run_ledger_flush(stream, factory, 100, 0.01))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not [line for line in log if line.startswith("ack")]
