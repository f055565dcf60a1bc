"""Money is an integer count of minor units plus an ISO 4217 currency code."""
from __future__ import annotations

import re

_CURRENCY = re.compile(r"^[A-Z]{3}$")

# Larger than any real balance, small enough for PostgreSQL BIGINT sums over billions of rows.
MAX_AMOUNT_MINOR = 10**15


def is_currency(value: object) -> bool:
    return isinstance(value, str) and bool(_CURRENCY.match(value))


def is_amount_minor(value: object, *, allow_zero: bool = False) -> bool:
    """True for a whole number of minor units in range. bool is not an amount, nor is a float."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    low = 0 if allow_zero else 1
    return low <= value <= MAX_AMOUNT_MINOR
