"""What the batched agents share: the messages of a batch, the partition of a key, the
record table they write once per key per batch, and the durable commit.

An agent takes what its stream has fetched (a batch over the partitions it owns), decides
every message in order with the pure core, and then makes the batch durable in one
PostgreSQL transaction: postings, audit records, changed records, answers, claims and
stream positions. Only then does anything leave the worker (changelog writes, cache
snapshots, replies, messages to other agents), and only then are the messages
acknowledged. A crash anywhere before the commit loses nothing that was answered; a
crash after it redelivers messages whose operations are recorded, which replay."""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from dataclasses import dataclass
from typing import AbstractSet, Any, Awaitable, Callable, Iterable, MutableMapping, Protocol, Sequence, TypeVar

from aiokafka.partitioner import DefaultPartitioner

from app.domain.errors import InvariantViolation
from config.settings import AFTER_COMMIT, BEFORE_COMMIT, CrashPoint
from storage.ports import AgentStore, BatchCommit

log = logging.getLogger("bankroll.batch")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    timestamp_ms: int

    @classmethod
    def of(cls, message: Any) -> "Message":
        """From a message as the consumer fetched it (raw bytes key and value)."""
        return cls(message.topic, message.partition, message.offset, message.key, message.value,
                   int(message.timestamp * 1000))


def positions_of(messages: Iterable[Message]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the next offset to read once these messages are done."""
    positions: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic, m.partition)
        positions[tp] = max(positions.get(tp, 0), m.offset + 1)
    return positions


@functools.lru_cache(maxsize=65_536)
def partition_of(key: bytes, partitions: int) -> int:
    """The partition of a key on every Bankroll topic and table (Kafka's default murmur2,
    in pure Python: a key's partition is asked for several times a message, so it is
    remembered for the hot keys)."""
    return _PARTITIONER(key, list(range(partitions)), list(range(partitions)))


def owns_key(key: bytes, partition: int, partitions: int) -> bool:
    """Whether a message on this partition may be applied to the record of its key: the
    partition the command topic (and so the table) would use for it. A producer with
    another partitioner would otherwise give one player two owners."""
    return partition_of(key, partitions) == partition


_PARTITIONER = DefaultPartitioner()


class RecordTable(Protocol):
    """The records of an agent by key, as raw bytes."""

    def get(self, key: bytes) -> bytes | None: ...

    def write(self, partition: int, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Store these records and send them to the changelog partition `partition`."""

    def load(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Store records restored from elsewhere, without a changelog write."""

    def items(self) -> Iterable[tuple[bytes, bytes]]: ...


class FaustRecordTable:
    """A Faust changelogged table, written in batches.

    Faust routes a table write to the changelog partition of the event being processed,
    and refuses one made outside of an event; a batch has many events. So the store is
    written directly and each changelog write names its partition, which is the partition
    of the record's key on the co-partitioned input topics.

    Every record is in PostgreSQL before it reaches the table, and a worker that takes a
    partition over restores from PostgreSQL whatever the changelog lacks or has older. So
    the changelog is the fast path of a recovery, not its truth, and a busy key need not
    be sent to it after every batch: with `changelog_interval_ms` a key is sent at most
    once per interval, its newest record (`flush_changelog` sends those that are due).
    That keeps a broker that retains every record it is sent (the embedded one) from
    growing with every operation of every hot player and pool."""

    def __init__(self, table: Any, changelog_interval_ms: int = 0) -> None:
        self.table = table
        self.changelog_interval_ms = changelog_interval_ms
        self._sent_at_ms: dict[bytes, int] = {}
        self._due: dict[bytes, int] = {}  # key -> partition, of records not sent yet

    def get(self, key: bytes) -> bytes | None:
        return self.table.data.get(key)

    def write(self, partition: int, records: Sequence[tuple[bytes, bytes]], now_ms: int | None = None) -> None:
        data = self.table.data
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        for key, value in records:
            data[key] = value
            if now_ms - self._sent_at_ms.get(key, -self.changelog_interval_ms) >= self.changelog_interval_ms:
                self._send(partition, key, value, now_ms)
            else:
                self._due[key] = partition

    def flush_changelog(self, owned: set[int], now_ms: int | None = None, everything: bool = False) -> int:
        """Send the records held back whose interval is over (all of them with
        `everything`); a record of a partition no longer owned is dropped, its new owner
        having restored it from PostgreSQL. Returns how many were sent."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        sent = 0
        for key, partition in list(self._due.items()):
            if partition not in owned:
                del self._due[key]
            elif everything or now_ms - self._sent_at_ms.get(key, 0) >= self.changelog_interval_ms:
                del self._due[key]
                value = self.table.data.get(key)
                if value is not None:
                    self._send(partition, key, value, now_ms)
                    sent += 1
        return sent

    def _send(self, partition: int, key: bytes, value: bytes, now_ms: int) -> None:
        self._due.pop(key, None)
        self._sent_at_ms[key] = now_ms
        self.table.send_changelog(partition, key, value)

    def load(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        data = self.table.data
        for key, value in records:
            data[key] = value

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return list(self.table.data.items())


class DictRecordTable:
    """A RecordTable in a dict, with the changelog writes kept in order (agent tests)."""

    def __init__(self, data: MutableMapping[bytes, bytes] | None = None) -> None:
        self.data: MutableMapping[bytes, bytes] = {} if data is None else data
        self.changelog: list[tuple[int, bytes, bytes]] = []

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def write(self, partition: int, records: Sequence[tuple[bytes, bytes]]) -> None:
        for key, value in records:
            self.data[key] = value
            self.changelog.append((partition, key, value))

    def load(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        self.data.update(records)

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        return list(self.data.items())


async def commit_durably(store: AgentStore, commit: BatchCommit, *, retry_delay_s: float = 0.2,
                         max_delay_s: float = 5.0) -> None:
    """Commit, retrying while PostgreSQL is unreachable or failing over: nothing of the
    batch may leave the worker before it is stored. Refusals of the batch itself
    (StaleRecords, ClaimTaken) are raised for the agent to decide again."""
    from storage.ports import ClaimTaken, PostingsConflict, StaleRecords

    attempt = 0
    while True:
        try:
            await store.commit(commit)
            return
        except (StaleRecords, ClaimTaken, PostingsConflict, InvariantViolation):
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempt += 1
            log.warning("commit of a %s batch failed (attempt %d, %d postings): %r", commit.agent, attempt,
                        len(commit.postings), exc)
            await asyncio.sleep(min(retry_delay_s * attempt, max_delay_s))


async def read_durably(what: str, read: Callable[[], Awaitable[Any]], *, retry_delay_s: float = 0.2,
                       max_delay_s: float = 5.0) -> Any:
    """A read a batch cannot be decided without (stored answers, claims, records), retried
    while PostgreSQL is unreachable: the batch waits, it is neither skipped nor failed."""
    attempt = 0
    while True:
        try:
            return await read()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempt += 1
            log.warning("reading %s for a batch failed (attempt %d): %r", what, attempt, exc)
            await asyncio.sleep(min(retry_delay_s * attempt, max_delay_s))


# How often a batch is decided again after a refused commit (a record another worker
# wrote, an id another player claimed) before the agent gives up: each refusal means a
# rebalance moved keys under the batch, which settles within a few tries.
MAX_DECISION_ROUNDS = 10


def applied_before(postings: Iterable[Any], operations: AbstractSet[tuple[str, str]]) -> bool:
    """Whether a decision's postings belong to operations the ledger holds already."""
    return any((p.tenant_id, p.operation_id) in operations for p in postings)


async def decide_and_commit(
    store: AgentStore, table: RecordTable,
    decide: Callable[[set[tuple[str, str]]], Awaitable[tuple[T, BatchCommit]]],
) -> tuple[T, BatchCommit]:
    """Decide a batch and commit it; when the commit is refused, decide it again: on the
    stored records (StaleRecords), knowing the claims (ClaimTaken), or refusing the
    operations already in the ledger (PostingsConflict: `decide` gets their (tenant,
    operation id) pairs and answers them with already_applied)."""
    from storage.ports import ClaimTaken, PostingsConflict, StaleRecords

    in_ledger: set[tuple[str, str]] = set()
    for _ in range(MAX_DECISION_ROUNDS):
        decided, commit = await decide(in_ledger)
        try:
            await commit_durably(store, commit)
            return decided, commit
        except StaleRecords as exc:
            # Another worker wrote these records since this one loaded them.
            stale = exc.keys
            fresh = await read_durably("records", lambda: store.records_of(commit.agent, stale))
            table.load([(key, raw) for key, (_, raw) in fresh.items()])
            log.warning("records changed under a batch, deciding it again: %s", exc)
        except ClaimTaken as exc:
            log.warning("ids of a batch were claimed meanwhile, deciding it again: %s", exc)
        except PostingsConflict as exc:
            log.warning("a batch applies operations the ledger holds already, refusing them: %s", exc)
            in_ledger |= exc.operations
    raise RuntimeError(f"a {commit.agent} batch was refused {MAX_DECISION_ROUNDS} times in a row")


def with_crash_point(store: AgentStore, point: CrashPoint | None) -> AgentStore:
    """The store, or with a crash point (FAULT_CRASH_POINT, crash tests only) a store whose
    process kills itself right before or right after its Nth commit."""
    return store if point is None else CrashingStore(store, point)


class CrashingStore:
    """An AgentStore that SIGKILLs its own process at a crash point: nothing runs after
    it, no `finally`, no flush, exactly as under kill -9."""

    def __init__(self, store: AgentStore, point: CrashPoint) -> None:
        self.store = store
        self.point = point
        self.commits = 0

    async def commit(self, batch: BatchCommit) -> None:
        self.commits += 1
        crash = self.commits == self.point.commit
        if crash and self.point.moment == BEFORE_COMMIT:
            self._die(batch)
        await self.store.commit(batch)
        if crash and self.point.moment == AFTER_COMMIT:
            self._die(batch)

    def _die(self, batch: BatchCommit) -> None:
        log.warning("crash point %s:%d reached (a batch of %d postings): killing the worker", self.point.moment,
                    self.point.commit, len(batch.postings))
        os.kill(os.getpid(), signal.SIGKILL)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def write_records(table: RecordTable, commit: BatchCommit) -> None:
    """The committed records into the table: one changelog write each, on its partition."""
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {}
    for write in commit.records:
        by_partition.setdefault(write.partition, []).append((write.key, write.record))
    for partition, records in by_partition.items():
        table.write(partition, records)


Sender = Callable[[str, bytes, bytes], Awaitable[None]]
