"""Faust wiring: the consumer Faust builds carries our fetch wait, not its hard-coded 1500 ms."""
import asyncio

from app.streaming import create_streams
from config import Settings


async def test_worker_consumer_uses_the_configured_fetch_wait():
    settings = Settings.from_env({"CONSUMER_FETCH_MAX_WAIT_MS": "7", "TOPIC_PARTITIONS": "2"})
    app = create_streams(settings).app
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(app.transport)
    try:
        assert consumer._fetch_max_wait_ms == 7
        assert consumer._session_timeout_ms == int(settings.broker_session_timeout_s * 1000)
        assert consumer._heartbeat_interval_ms == int(settings.broker_heartbeat_interval_s * 1000)
    finally:
        await consumer.stop()


def test_topics_and_table_follow_the_settings():
    streams = create_streams(Settings.from_env({"TOPIC_PREFIX": "staging.", "TOPIC_PARTITIONS": "3"}))
    assert streams.wallet_commands.get_topic_name() == "staging.wallet.commands"
    assert streams.ledger_postings.get_topic_name() == "staging.ledger.postings"
    assert streams.wallets.partitions == 3
    assert (streams.wallets.key_serializer, streams.wallets.value_serializer) == ("raw", "raw")


def test_a_round_is_owned_by_the_partition_the_command_topic_would_use():
    from aiokafka.partitioner import DefaultPartitioner

    from agents.batch import owns_key
    from app.messages import wallet_key

    key = wallet_key("dev", "p42")
    expected = DefaultPartitioner()(key, list(range(8)), list(range(8)))
    assert owns_key(key, expected, 8)
    assert not any(owns_key(key, p, 8) for p in range(8) if p != expected)


async def test_the_producer_flush_before_an_offset_commit_drains_every_table_write():
    """Faust's own buffer flush gives up after 0.1 s without progress; ours waits until the
    last message, including the one being handed over, has reached the Kafka client."""
    import asyncio

    from app.streaming import _CountingProducerBuffer, _DrainingProducer, drain

    app = create_streams(Settings.from_env({"TOPIC_PARTITIONS": "1"})).app
    assert isinstance(app.producer, _DrainingProducer)
    assert isinstance(app.producer.buffer, _CountingProducerBuffer)

    class SlowBuffer:
        """Like Faust's: messages leave one every 0.15 s (a busy loop), and flush gives up
        after 0.1 s without one leaving, with messages still queued."""

        def __init__(self) -> None:
            self.size, self.sending = 3, 0

        async def send_all(self) -> None:
            while self.size:
                self.size -= 1
                self.sending = 1
                await asyncio.sleep(0.15)
                self.sending = 0

        async def flush(self) -> None:
            if self.size:
                await asyncio.sleep(0.1)

    buffer = SlowBuffer()
    sender = asyncio.create_task(buffer.send_all())
    await buffer.flush()
    assert buffer.size  # what Faust's flush alone leaves behind
    await drain(buffer)
    assert (buffer.size, buffer.sending) == (0, 0)
    await sender


async def test_an_inbox_hands_over_fetches_in_order_and_forgets_what_a_rebalance_drops():
    """A batch is what was fetched, in order, up to the batch size; emptied by a revoke,
    the inbox's messages stop being pending in the consumer, or the rebalance would wait
    for acknowledgements that never come."""
    from faust.types.tuples import Message as ConsumerMessage

    settings = Settings.from_env({"TOPIC_PARTITIONS": "1"})
    app = create_streams(settings).app
    inbox = app.inbox(["t.a", "t.b"], max_pending=3)
    assert app.inboxes == {"t.a": inbox, "t.b": inbox}
    fetched = [ConsumerMessage("t.a", 0, offset, 0.0, 0, [], b"k", b"v", None) for offset in range(5)]
    for message in fetched:
        app.consumer.track_message(message)
    inbox.put(fetched)
    assert not inbox.has_room()
    assert [m.offset for m in await inbox.take(2)] == [0, 1]
    assert not inbox.has_room()
    assert [m.offset for m in await inbox.take(2)] == [2, 3]
    assert inbox.has_room()

    app.flow_control.clear()  # what Faust does when partitions are revoked
    assert set(app.consumer.unacked) == {fetched[0], fetched[1], fetched[2], fetched[3]}
    waiting = asyncio.ensure_future(inbox.take(10))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    inbox.put(fetched[:1])
    assert await waiting == fetched[:1]
