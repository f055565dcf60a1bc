"""The Faust application: transport tuning and the streams (topic names: app/topics.py; tables: tables/)."""
from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Sequence

import aiokafka
import faust
from aiokafka import TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth, server_list
from faust.transport.producer import ProducerBuffer
from faust.types import TP

from app.topics import (
    GAME_ROUND_RESULTS, GAME_ROUNDS, JP_COMMANDS, JP_CONTRIBUTION_RECORDED, JP_PAYOUT_CREDITED, JP_PAYOUT_FAILED,
    JP_PAYOUT_REQUESTED, LEDGER_POSTINGS, WALLET_COMMANDS, topic_name,
)
from config import Settings
from tables.declare import declare_tables


async def true_end_offsets(consumer_kwargs: dict, ends: Mapping[Any, int], timeout_s: float) -> dict:
    """The real end of each partition, given the broker's ListOffsets answer.

    Tansu (the embedded broker) answers ListOffsets LATEST with the base offset of the
    last record batch + 1 instead of the last record's offset + 1, so a partition that
    ends in a batch of several records looks shorter than it is. The fetch high watermark
    is right, and so is the last record of the last batch: both are read here with a
    short-lived consumer outside any group. On a correct broker this changes nothing."""
    probe = {TopicPartition(tp.topic, tp.partition): (tp, end) for tp, end in ends.items() if end}
    result = dict(ends)
    if not probe:
        return result
    side = aiokafka.AIOKafkaConsumer(group_id=None, enable_auto_commit=False, **consumer_kwargs)
    await side.start()
    try:
        side.assign(list(probe))
        for atp, (_, end) in probe.items():
            side.seek(atp, end - 1)
        pending = set(probe)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while pending and loop.time() < deadline:
            batch = await side.getmany(*pending, timeout_ms=200)
            for atp in list(pending):
                records = batch.get(atp) or []
                high = side.highwater(atp)
                if not records and high is None:
                    continue
                tp, end = probe[atp]
                last = records[-1].offset + 1 if records else 0
                result[tp] = max(end, last, high or 0)
                pending.discard(atp)
    finally:
        await side.stop()
    return result


class _TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes fetch_max_wait_ms=1500 unconditionally. Brokers that answer a fetch
        # only when that wait runs out (Tansu does) then add up to 1.5 s to every event;
        # aiokafka reads the attribute when it builds its fetcher at start-up.
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer

    async def _highwaters(self, partitions: List[TP]) -> Mapping[TP, int]:
        # Table recovery ends when it has read up to these offsets. With the broker's
        # ListOffsets answer alone it could stop before the last changelog records and
        # start a worker from stale wallet records (see true_end_offsets).
        ends = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return ends
        conf = self.app.conf
        return await true_end_offsets(
            dict(
                bootstrap_servers=server_list(self.transport.url, self.transport.default_port),
                client_id=conf.broker_client_id,
                request_timeout_ms=int(conf.broker_request_timeout * 1000.0),
                fetch_max_wait_ms=int(self.app.fetch_max_wait_ms),
                max_partition_fetch_bytes=conf.consumer_max_fetch_size,
                isolation_level="read_uncommitted",
                auto_offset_reset="earliest",
                **credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
            ),
            ends,
            timeout_s=conf.broker_request_timeout,
        )


class Inbox:
    """The messages of one agent's topics, handed over a fetch at a time.

    Faust delivers a message to an agent by creating two tasks to wait for it, taking a
    lock, building an event, queueing it on a channel and walking it through the stream's
    iterator, its sensors and its acknowledgement: about a quarter of a millisecond of
    CPU a message, several times what a wallet operation itself costs. A batched agent
    needs none of that, so the consumer puts every message of its topics in its inbox as
    fetched (still tracked as unacknowledged, so a rebalance waits for the batch in hand)
    and the agent takes them a batch at a time and acknowledges them once committed.

    Registered with the app's flow control, which empties it when partitions are revoked,
    as it empties the channels of Faust's own streams. The messages it drops are no longer
    pending (`forget`): a rebalance waits for every pending message to be acknowledged,
    and these never will be; they are fetched again from the committed offsets."""

    def __init__(self, topics: Sequence[str], max_pending: int,
                 forget: Callable[[Sequence[Any]], None] = lambda messages: None) -> None:
        self.topics = frozenset(topics)
        self.max_pending = max_pending
        self._forget = forget
        self._messages: deque = deque()
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def put(self, messages: Sequence[Any]) -> None:
        self._messages.extend(messages)
        self._arrived.set()
        if len(self._messages) >= self.max_pending:
            self._room.clear()

    async def wait_room(self) -> None:
        await self._room.wait()

    def has_room(self) -> bool:
        return self._room.is_set()

    async def take(self, max_messages: int) -> list:
        """At least one message, at most max_messages, in the order fetched."""
        while not self._messages:
            self._arrived.clear()
            await self._arrived.wait()
        messages = self._messages
        batch = [messages.popleft() for _ in range(min(max_messages, len(messages)))]
        if len(messages) < self.max_pending:
            self._room.set()
        return batch

    def clear(self) -> None:
        dropped = list(self._messages)
        self._messages.clear()
        self._room.set()
        self._forget(dropped)


class _TunedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _TunedConsumerThread:
        return _TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def forget(self, messages: Sequence[Any]) -> None:
        """These messages will not be processed here: no longer pending an acknowledgement."""
        unacked = self._unacked_messages
        for message in messages:
            unacked.discard(message)

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop, except that the messages of a topic with an inbox go to the
        inbox, a fetch at a time, instead of one by one through a callback awaited in two
        new tasks. Offsets, gaps and the commit cadence are kept as Faust keeps them."""
        inboxes: Mapping[str, Inbox] = getattr(self.app, "inboxes", {})
        callback = self.callback
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        track = self.track_message
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                ait = self.getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                generation = self.app.consumer_generation_id
                fetched: dict[Inbox, list] = {}
                async for tp, message in ait:
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue
                    if r_offset and offset - r_offset > 1 and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if self._commit_every is not None and self._n_acked >= self._commit_every:
                        self._n_acked = 0
                        await self.commit()
                    inbox = inboxes.get(tp.topic)
                    if inbox is None:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    else:
                        track(message)
                        fetched.setdefault(inbox, []).append(message)
                    set_read_offset(tp, offset)
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    # A rebalance began while this fetch was handed out (a commit or a
                    # callback above awaited): its messages may belong to partitions
                    # revoked meanwhile, whose inboxes were emptied. They are fetched
                    # again from the committed offsets, so they are dropped here.
                    self.forget([m for messages in fetched.values() for m in messages])
                    continue
                for inbox, messages in fetched.items():
                    inbox.put(messages)
                for inbox in fetched:
                    if not inbox.has_room():
                        await self.wait_first(inbox.wait_room(), self.suspend_flow.wait())
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise


class _CountingProducerBuffer(ProducerBuffer):
    """Counts the messages being handed to the Kafka client: the buffer's queue no longer
    holds them, and the client's accumulator does not hold them yet."""

    sending = 0

    async def _send_pending(self, fut: Any) -> None:
        self.sending += 1
        try:
            await super()._send_pending(fut)
        finally:
            self.sending -= 1


async def drain(buffer: Any) -> None:
    """Wait until every message put in the buffer has reached the Kafka client.

    ProducerBuffer.flush returns once 0.1 s passes without a message going out, even with
    messages still queued, and does not see the one being handed over. Faust flushes its
    producer right before it commits the offsets of processed events, and table writes
    (the wallet and pool records) travel through this buffer: an offset committed while
    a record's changelog write was still queued would survive a crash that loses the
    write, and the event would never be processed again."""
    while buffer.size or buffer.sending:
        await buffer.flush()
        if not buffer.size and buffer.sending:
            await asyncio.sleep(0.001)


class _DrainingProducer(faust_aiokafka.Producer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        buffer = _CountingProducerBuffer(loop=self.loop, beacon=self.beacon)
        buffer.app = self.app
        self.buffer = buffer

    async def flush(self) -> None:
        await drain(self.buffer)
        await super().flush()


class _TunedTransport(faust_aiokafka.Transport):
    Consumer = _TunedConsumer
    Producer = _DrainingProducer


class BankrollApp(faust.App):
    fetch_max_wait_ms: int = 1500
    inboxes: dict[str, Inbox]

    def inbox(self, topics: Sequence[str], max_pending: int) -> Inbox:
        """An inbox for the messages of these topics (see Inbox): the agent that reads
        it must be subscribed to them."""
        box = Inbox(topics, max_pending, forget=lambda messages: self.consumer.forget(messages))
        self.inboxes = {**getattr(self, "inboxes", {}), **{topic: box for topic in box.topics}}
        self.flow_control.manage_queue(box)
        return box

    def _new_transport(self) -> Any:
        return _TunedTransport(self.conf.broker_consumer, self, loop=self.loop)


@dataclass(frozen=True)
class Streams:
    app: BankrollApp
    wallet_commands: Any
    ledger_postings: Any
    game_rounds: Any
    game_round_results: Any
    # The wallet agent's subscription: commands and game rounds, co-partitioned with the
    # table, so one actor per partition serializes everything about a player.
    wallet_inputs: Any
    wallets: Any  # the changelogged table: key tenant|player (bytes) -> msgpack wallet record
    jp_commands: Any
    jp_contribution_recorded: Any
    jp_payout_requested: Any
    jp_payout_credited: Any
    jp_payout_failed: Any
    # The jackpot agent's subscription: pool commands and the wallet's payout answers.
    jackpot_inputs: Any
    # key tenant|pool -> msgpack pool record; key tenant|pool|op|{operation} -> that
    # operation's record (see agents/jackpot.py)
    pools: Any


def create_streams(settings: Settings, *, app_id: str | None = None) -> Streams:
    app = BankrollApp(
        app_id or settings.faust_app_id,
        broker=settings.kafka_url,
        store="memory://",
        datadir=str(settings.run_dir / "faust"),
        web_enabled=False,
        autodiscover=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        topic_allow_declare=True,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=settings.broker_heartbeat_interval_s,
        broker_rebalance_timeout=settings.broker_rebalance_timeout_s,
        broker_request_timeout=settings.broker_request_timeout_s,
        broker_commit_interval=settings.broker_commit_interval_s,
        producer_linger_ms=settings.worker_producer_linger_ms,
        # Tables are rebuilt from their changelog on every assignment; standbys would
        # double the changelog reading on a two-core machine for no gain in recovery.
        table_standby_replicas=0,
    )
    app.fetch_max_wait_ms = settings.consumer_fetch_max_wait_ms

    def raw_topic(*names: str) -> Any:
        """A topic (or a subscription to several) of raw bytes keys and values, with the
        prefix and the partition count of every Bankroll topic."""
        return app.topic(*(topic_name(settings, n) for n in names), key_type=bytes, value_type=bytes,
                         key_serializer="raw", value_serializer="raw", partitions=settings.topic_partitions)

    wallet_inputs = raw_topic(WALLET_COMMANDS, GAME_ROUNDS, JP_PAYOUT_REQUESTED)
    jackpot_inputs = raw_topic(JP_COMMANDS, JP_PAYOUT_CREDITED, JP_PAYOUT_FAILED)
    wallets, pools = declare_tables(app, settings)
    return Streams(app=app, wallet_commands=raw_topic(WALLET_COMMANDS), ledger_postings=raw_topic(LEDGER_POSTINGS),
                   game_rounds=raw_topic(GAME_ROUNDS), game_round_results=raw_topic(GAME_ROUND_RESULTS),
                   wallet_inputs=wallet_inputs, wallets=wallets, jp_commands=raw_topic(JP_COMMANDS),
                   jp_contribution_recorded=raw_topic(JP_CONTRIBUTION_RECORDED),
                   jp_payout_requested=raw_topic(JP_PAYOUT_REQUESTED), jp_payout_credited=raw_topic(JP_PAYOUT_CREDITED),
                   jp_payout_failed=raw_topic(JP_PAYOUT_FAILED), jackpot_inputs=jackpot_inputs, pools=pools)
