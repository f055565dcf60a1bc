"""The Faust application: transport tuning, topics and tables, declared in one place."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from config import Settings

WALLET_COMMANDS = "wallet.commands"
LEDGER_POSTINGS = "ledger.postings"
GAME_ROUNDS = "game.rounds"  # game servers publish finished rounds here (JSON)
GAME_ROUND_RESULTS = "game.rounds.results"  # Bankroll's answer to each round (JSON)
WALLET_TABLE = "wallets"


def topic_name(settings: Settings, name: str) -> str:
    return settings.topic_prefix + name


class _TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # Faust passes fetch_max_wait_ms=1500 unconditionally. Brokers that answer a fetch
        # only when that wait runs out (Tansu does) then add up to 1.5 s to every event;
        # aiokafka reads the attribute when it builds its fetcher at start-up.
        consumer._fetch_max_wait_ms = self.app.fetch_max_wait_ms
        return consumer


class _TunedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _TunedConsumerThread:
        return _TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _TunedTransport(faust_aiokafka.Transport):
    Consumer = _TunedConsumer


class BankrollApp(faust.App):
    fetch_max_wait_ms: int = 1500

    def _new_transport(self) -> Any:
        return _TunedTransport(self.conf.broker_consumer, self, loop=self.loop)


@dataclass(frozen=True)
class Streams:
    app: BankrollApp
    wallet_commands: Any
    ledger_postings: Any
    game_rounds: Any
    game_round_results: Any
    wallets: Any  # the changelogged table: key tenant|player (bytes) -> msgpack wallet record


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
    wallet_commands = app.topic(
        topic_name(settings, WALLET_COMMANDS), key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        partitions=settings.topic_partitions,
    )
    ledger_postings = app.topic(
        topic_name(settings, LEDGER_POSTINGS), key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
        partitions=settings.topic_partitions,
    )
    game_rounds = app.topic(
        topic_name(settings, GAME_ROUNDS), key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw", partitions=settings.topic_partitions,
    )
    game_round_results = app.topic(
        topic_name(settings, GAME_ROUND_RESULTS), key_type=bytes, value_type=bytes, key_serializer="raw",
        value_serializer="raw", partitions=settings.topic_partitions,
    )
    # bytes key and value types make Faust use the raw codec for the changelog, both when
    # writing and when recovering; the value is the msgpack record of app.domain.wallet.codec.
    wallets = app.Table(
        WALLET_TABLE, default=None, partitions=settings.topic_partitions, key_type=bytes, value_type=bytes,
    )
    return Streams(app=app, wallet_commands=wallet_commands, ledger_postings=ledger_postings,
                   game_rounds=game_rounds, game_round_results=game_round_results, wallets=wallets)
