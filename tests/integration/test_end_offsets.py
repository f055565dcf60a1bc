"""The real end of a partition, whatever the broker's ListOffsets says (Tansu answers
with the base offset of the last batch + 1 when that batch holds several records)."""
from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.api.bus import bootstrap_servers
from app.streaming import true_end_offsets

pytestmark = pytest.mark.integration


async def test_true_end_offsets_count_every_record_of_multi_record_batches(stack):
    servers = bootstrap_servers(stack.settings.kafka_url)
    topic = f"end-offsets-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=servers, linger_ms=50)
    await producer.start()
    try:
        for batch in (10, 1, 3, 7):  # sent without waiting, so each group goes as one batch
            futures = [await producer.send(topic, b"x", partition=0) for _ in range(batch)]
            await producer.flush()
            for f in futures:
                await f
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=servers)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        listed = (await consumer.end_offsets([tp]))[tp]
    finally:
        await consumer.stop()
    ends = await true_end_offsets({"bootstrap_servers": servers}, {tp: listed}, timeout_s=10)
    assert ends[tp] == 21, f"ListOffsets said {listed}"
    assert await true_end_offsets({"bootstrap_servers": servers}, {}, timeout_s=1) == {}
