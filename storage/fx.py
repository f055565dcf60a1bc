"""FX rates: the port, an in-memory adapter and the PostgreSQL adapter."""
from __future__ import annotations

from decimal import Decimal
from typing import Protocol

import asyncpg

from storage.history import datetime_to_ms, ms_to_datetime


class FxRates(Protocol):
    async def add(self, base: str, quote: str, rate: Decimal, valid_from_ms: int) -> None:
        """Record a rate; a second rate for the same pair and time is ignored."""

    async def rate_at(self, base: str, quote: str, at_ms: int) -> tuple[Decimal, int] | None:
        """The rate in force at at_ms (the latest valid_from not after it) and its valid_from."""


class MemoryFxRates:
    def __init__(self) -> None:
        self._rates: dict[tuple[str, str], dict[int, Decimal]] = {}

    async def add(self, base: str, quote: str, rate: Decimal, valid_from_ms: int) -> None:
        self._rates.setdefault((base, quote), {}).setdefault(valid_from_ms, rate)

    async def rate_at(self, base: str, quote: str, at_ms: int) -> tuple[Decimal, int] | None:
        candidates = [t for t in self._rates.get((base, quote), {}) if t <= at_ms]
        if not candidates:
            return None
        valid_from = max(candidates)
        return self._rates[(base, quote)][valid_from], valid_from


class PostgresFxRates:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def add(self, base: str, quote: str, rate: Decimal, valid_from_ms: int) -> None:
        await self._pool.execute(
            "INSERT INTO fx_rates (base, quote, rate, valid_from) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            base, quote, rate, ms_to_datetime(valid_from_ms),
        )

    async def rate_at(self, base: str, quote: str, at_ms: int) -> tuple[Decimal, int] | None:
        row = await self._pool.fetchrow(
            "SELECT rate, valid_from FROM fx_rates WHERE base = $1 AND quote = $2 AND valid_from <= $3 "
            "ORDER BY valid_from DESC LIMIT 1",
            base, quote, ms_to_datetime(at_ms),
        )
        if row is None:
            return None
        return row["rate"], datetime_to_ms(row["valid_from"])
