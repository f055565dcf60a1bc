"""Prometheus metrics shared by the web and worker processes."""
from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

HTTP_SECONDS = Histogram(
    "bankroll_http_request_seconds", "HTTP request latency", ["route", "method", "status"], buckets=_LATENCY_BUCKETS
)
HTTP_ERRORS = Counter("bankroll_http_errors_total", "HTTP error responses by code", ["code"])
REPLY_TIMEOUTS = Counter("bankroll_reply_timeouts_total", "Requests whose agent result did not arrive in time")
AGENT_SECONDS = Histogram(
    "bankroll_agent_command_seconds", "Time an agent (wallet or jackpot) spends on one command", ["kind"],
    buckets=_LATENCY_BUCKETS,
)
LEDGER_FLUSH_SECONDS = Histogram(
    "bankroll_ledger_flush_seconds", "Time to commit one batch to PostgreSQL", buckets=_LATENCY_BUCKETS
)
POISON_MESSAGES = Counter("bankroll_poison_messages_total", "Undecodable messages skipped by an agent")
ROUNDS_REJECTED = Counter("bankroll_game_rounds_rejected_total", "Game round messages that failed validation")
LEDGER_FLUSH_ROWS = Counter("bankroll_ledger_rows_total", "Ledger rows committed to PostgreSQL")
JP_POOL_SIZE = Gauge("bankroll_jackpot_pool_size_minor", "Jackpot tier sizes in minor units",
                     ["tenant", "pool", "tier"])
JP_PAYOUT_SECONDS = Histogram(
    "bankroll_jackpot_payout_seconds", "From a jackpot win to the wallet's credit of the winner",
    buckets=_LATENCY_BUCKETS,
)
JP_CONTRIBUTIONS_REFUSED = Counter("bankroll_jackpot_contributions_refused_total",
                                   "Contributions a pool refused, by result code", ["code"])
