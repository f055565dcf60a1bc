"""UTC calendar periods from epoch milliseconds, with integer arithmetic only, so the
core needs no clock and no datetime: responsible-gaming limits count per day, ISO week
and month."""
from __future__ import annotations

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MINUTE_MS = 60_000
PERIODS = ("day", "week", "month")


def day_index(now_ms: int) -> int:
    return now_ms // DAY_MS


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month, day) of a day count since 1970-01-01 (H. Hinnant's algorithm)."""
    z = days + 719_468
    era = (z if z >= 0 else z - 146_096) // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return (y + 1 if m <= 2 else y), m, d


def period_key(period: str, now_ms: int) -> str:
    """A label of the period containing now_ms: d20412, w2916 (weeks start on Monday), m2025-11."""
    days = day_index(now_ms)
    if period == "day":
        return f"d{days}"
    if period == "week":
        # 1970-01-01 was a Thursday; counting from Monday 1969-12-29 makes weeks start on Monday.
        return f"w{(days + 3) // 7}"
    if period == "month":
        year, month, _ = _civil_from_days(days)
        return f"m{year:04d}-{month:02d}"
    if period == "hour":
        return f"h{now_ms // HOUR_MS}"
    raise ValueError(f"unknown period {period!r}")
