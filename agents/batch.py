"""What the batched agents share: the messages of a batch, the record table they write
once per key per batch, and the durable commit.

An agent takes what its stream has fetched (a batch over the partitions it owns), decides
every message in order with the pure core, and then makes the batch durable in one
PostgreSQL transaction: postings, audit records, changed records, answers, claims and
stream positions. Only then does anything leave the worker (changelog writes, cache
snapshots, replies, messages to other agents), and only then are the messages
acknowledged. A crash anywhere before the commit loses nothing that was answered; a
crash after it redelivers messages whose operations are recorded, which replay."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, MutableMapping, Protocol, Sequence

from storage.ports import AgentStore, BatchCommit

log = logging.getLogger("bankroll.batch")


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    partition: int
    offset: int
    key: Any
    value: Any
    timestamp_ms: int

    @classmethod
    def of(cls, event: Any) -> "Message":
        message = event.message
        return cls(message.topic, message.partition, message.offset, event.key, event.value,
                   int(message.timestamp * 1000))


def positions_of(messages: Iterable[Message]) -> dict[tuple[str, int], int]:
    """(topic, partition) -> the next offset to read once these messages are done."""
    positions: dict[tuple[str, int], int] = {}
    for m in messages:
        tp = (m.topic, m.partition)
        positions[tp] = max(positions.get(tp, 0), m.offset + 1)
    return positions


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
    of the record's key on the co-partitioned input topics."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def get(self, key: bytes) -> bytes | None:
        return self.table.data.get(key)

    def write(self, partition: int, records: Sequence[tuple[bytes, bytes]]) -> None:
        data = self.table.data
        for key, value in records:
            data[key] = value
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
    from storage.ports import ClaimTaken, StaleRecords

    attempt = 0
    while True:
        try:
            await store.commit(commit)
            return
        except (StaleRecords, ClaimTaken):
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            attempt += 1
            log.warning("commit of a %s batch failed (attempt %d, %d postings): %r", commit.agent, attempt,
                        len(commit.postings), exc)
            await asyncio.sleep(min(retry_delay_s * attempt, max_delay_s))


Sender = Callable[[str, bytes, bytes], Awaitable[None]]
