"""Flushes postings from `ledger.postings` into the PostgreSQL ledger in batches.

Postings an earlier version left on `ledger.postings` are still flushed; nothing writes
there now (the agents commit their postings with their batches).

A message is acknowledged only after its rows and the reader's positions are committed
in one transaction. Until then the loop retries; it never lets an uncommitted batch be
acked (Faust's take() acks in a finally block, so it is not used here)."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Sequence

from agents.runtime import Worker
from app.messages import decode_ledger_batch
from app.metrics import LEDGER_FLUSH_ROWS, LEDGER_FLUSH_SECONDS
from storage.ports import LedgerStore

log = logging.getLogger("bankroll.ledger_flush")

CONSUMER_NAME = "ledger-flush"


async def flush_batch(store: LedgerStore, events: Sequence[Any], *, retry_delay_s: float = 0.5) -> int:
    postings, audit = [], []
    positions: dict[tuple[str, int], int] = {}
    for event in events:
        message = event.message
        legs, records = decode_ledger_batch(event.value)
        postings.extend(legs)
        audit.extend(records)
        tp = (message.topic, message.partition)
        positions[tp] = max(positions.get(tp, 0), message.offset + 1)
    attempt = 0
    while True:
        started = time.perf_counter()
        try:
            added = await store.append(postings, positions, CONSUMER_NAME, audit=audit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # PostgreSQL down or failing over: keep the batch, retry.
            attempt += 1
            log.warning("ledger flush of %d rows failed (attempt %d): %r", len(postings), attempt, exc)
            await asyncio.sleep(min(retry_delay_s * attempt, 5.0))
            continue
        LEDGER_FLUSH_SECONDS.observe(time.perf_counter() - started)
        LEDGER_FLUSH_ROWS.inc(added)
        return added


async def run_ledger_flush(stream: Any, store_factory: Any, max_rows: int, within_s: float) -> None:
    store = await store_factory()
    async for events in stream.noack_take(max_rows, within=within_s):
        await flush_batch(store, events)
        for event in events:
            await stream.ack(event)


def register(worker: Worker) -> None:
    """The `ledger-flush` agent on this worker."""
    settings = worker.settings

    @worker.app.agent(worker.streams.ledger_postings, name="ledger-flush")
    async def ledger_flush_agent(stream):  # type: ignore[no-untyped-def]
        await run_ledger_flush(
            stream, worker.resources.ledger_store, settings.ledger_flush_max_rows, settings.ledger_flush_within_ms / 1000
        )
