"""HTTP → agent → HTTP: a command on the keyed topic, the result back through Redis.

Each web process subscribes to one Redis channel of its own. A request registers a
future under a fresh request id, produces its command (which names the channel and the
id), and waits. The agent publishes the result after its state is written. A result that
does not arrive in time is answered 504; retrying with the same idempotency key is safe
because the agent returns the recorded result of an operation id it has seen."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError

from app.messages import CommandEnvelope, decode_reply
from app.metrics import REPLY_TIMEOUTS
from app.topics import BANKROLL_TOPICS, WALLET_COMMANDS, topic_name
from config import Settings

log = logging.getLogger("bankroll.bus")


class ReplyTimeout(Exception):
    pass


def bootstrap_servers(kafka_url: str) -> str:
    return ",".join(part.split("://", 1)[-1] for part in kafka_url.split(","))


async def ensure_topics(settings: Settings, timeout_s: float = 60.0) -> None:
    """Create Bankroll's topics (BANKROLL_TOPICS) with the configured partition count."""
    deadline = time.monotonic() + timeout_s
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers(settings.kafka_url))
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(name, settings.topic_partitions, 1)
                for name in (topic_name(settings, t) for t in BANKROLL_TOPICS)
                if name not in existing
            ]
            if missing:
                try:
                    await admin.create_topics(missing)
                except TopicAlreadyExistsError:
                    pass
            return
        except (KafkaConnectionError, KafkaError, OSError) as exc:
            if time.monotonic() > deadline:
                raise
            log.info("waiting for the broker: %r", exc)
            await asyncio.sleep(0.5)
        finally:
            await admin.close()


class CommandBus:
    def __init__(self, settings: Settings, redis_client: aioredis.Redis) -> None:
        self._settings = settings
        self._redis = redis_client
        self.channel = f"bankroll:replies:{uuid.uuid4().hex}"
        self._pending: dict[str, asyncio.Future] = {}
        self._producer: AIOKafkaProducer | None = None
        self._pubsub = None
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        await ensure_topics(self._settings)
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(self.channel)
        self._listener = asyncio.create_task(self._listen(), name="reply-listener")
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap_servers(self._settings.kafka_url),
            linger_ms=self._settings.producer_linger_ms,
            acks="all",
            enable_idempotence=False,
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._listener:
            self._listener.cancel()
        if self._pubsub:
            await self._pubsub.aclose()
        if self._producer:
            await self._producer.stop()

    async def _listen(self) -> None:
        pubsub = self._pubsub
        while True:
            try:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped Redis connection: the client reconnects on the next call
                log.warning("reply channel error: %r", exc)
                await asyncio.sleep(0.1)
                continue
            if message is None:
                continue
            request_id, code, body = decode_reply(message["data"])
            future = self._pending.get(request_id)
            if future is not None and not future.done():
                future.set_result((code, body))

    async def request(self, key: bytes, envelope_fields: dict, command_kind: str, payload: dict,
                      topic: str = WALLET_COMMANDS) -> tuple[str, dict]:
        """Send a command to the agent that owns key (on `topic`, by default the wallet
        commands) and wait for its result."""
        if self._producer is None:
            raise RuntimeError("CommandBus.start() was not awaited")
        request_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        envelope = CommandEnvelope(
            kind=command_kind, reply_to=self.channel, request_id=request_id, payload=payload, **envelope_fields
        )
        try:
            delivery = await self._producer.send(topic_name(self._settings, topic), envelope.encode(), key=key)
            try:
                return await asyncio.wait_for(future, self._settings.reply_timeout_ms / 1000)
            except asyncio.TimeoutError:
                REPLY_TIMEOUTS.inc()
                if delivery.done() and delivery.exception() is not None:
                    raise ConnectionError(f"the command was not delivered: {delivery.exception()!r}") from None
                raise ReplyTimeout() from None
        finally:
            self._pending.pop(request_id, None)

    async def broker_reachable(self) -> bool:
        if self._producer is None:
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), 2.0)
            return True
        except Exception:
            return False
