"""The store of Bankroll's tables: Faust's in-memory store, recovered in bulk.

Faust recovers a table by handing every changelog record, one by one, through its
recovery loop; measured here at about 5,000 records a second, so 100,000 players took
some 20 s. This store reads its newly assigned changelog partitions itself when a
rebalance assigns them, with one plain consumer, in fetched batches (the whole
partition to its true end), and then tells Faust its changelog is read up to there
(`persisted_offset`), so Faust reads only what was written after. What the changelog
lacks or has older is restored from PostgreSQL afterwards (`restore` in agents/runtime.py)."""
from __future__ import annotations

import time
from typing import Iterable

import aiokafka
from aiokafka import TopicPartition
from faust.stores import STORES, memory
from faust.transport.drivers.aiokafka import server_list
from faust.types import TP

SCHEME = "bankroll"
READ_TIMEOUT_S = 120.0


class BulkRecoveryStore(memory.Store):
    def __post_init__(self) -> None:
        super().__post_init__()
        self._read_to: dict[TP, int] = {}

    def persisted_offset(self, tp: TP) -> int | None:
        return self._read_to.get(tp)

    async def on_rebalance(self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP],
                           generation_id: int = 0) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        for tp in revoked:
            self._read_to.pop(tp, None)
        changelog = self.table.changelog_topic.get_topic_name()
        todo = [tp for tp in newly_assigned if tp.topic == changelog]
        if todo:
            self._read_to.update(await self._read(todo))

    async def _read(self, tps: Iterable[TP]) -> dict[TP, int]:
        """Read the partitions from their beginning to the high watermark their first
        fetch reports (ListOffsets falls short on the embedded broker), applying each
        record; returns the offset of the last record read per partition."""
        conf = self.app.conf
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=server_list(conf.broker, 9092), group_id=None, enable_auto_commit=False,
            auto_offset_reset="earliest", fetch_max_wait_ms=int(self.app.fetch_max_wait_ms),
            max_partition_fetch_bytes=4 * 1024 * 1024, client_id=conf.broker_client_id,
        )
        await consumer.start()
        try:
            partitions = {TopicPartition(tp.topic, tp.partition): tp for tp in tps}
            consumer.assign(list(partitions))
            await consumer.seek_to_beginning(*partitions)
            ends: dict[TopicPartition, int] = {}
            remaining = set(partitions)
            deadline = time.monotonic() + READ_TIMEOUT_S
            data, where = self.data, self._key_partition
            while remaining:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {sorted(map(str, remaining))} in {READ_TIMEOUT_S} s")
                fetched = await consumer.getmany(*remaining, timeout_ms=200)
                for atp, records in fetched.items():
                    for record in records:
                        if record.value:
                            data[record.key] = record.value
                            where[record.key] = atp.partition
                        else:
                            data.pop(record.key, None)
                            where.pop(record.key, None)
                for atp in list(remaining):
                    highwater = consumer.highwater(atp)
                    if highwater is None:
                        continue
                    end = ends.setdefault(atp, highwater)
                    if await consumer.position(atp) >= end:
                        remaining.discard(atp)
            return {partitions[atp]: end - 1 for atp, end in ends.items()}
        finally:
            await consumer.stop()


def register() -> str:
    """Make the store known to Faust; returns its store URL."""
    STORES.aliases.setdefault(SCHEME, f"{__name__}:BulkRecoveryStore")
    # A URL with a host: yarl takes "scheme://" alone for false, and Faust would then use
    # the app-wide store.
    return f"{SCHEME}://tables"
