"""Money is an integer count of minor units plus an ISO 4217 currency code."""
from __future__ import annotations

import re

_CURRENCY = re.compile(r"^[A-Z]{3}$")

# Larger than any real balance, small enough for PostgreSQL BIGINT sums over billions of rows.
MAX_AMOUNT_MINOR = 10**15


# ISO 4217 minor-unit exponents that differ from the usual 2.
_EXPONENTS = {"JPY": 0, "KRW": 0, "CLP": 0, "ISK": 0, "VND": 0, "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3}


def minor_exponent(currency: str) -> int:
    return _EXPONENTS.get(currency, 2)


def is_currency(value: object) -> bool:
    return isinstance(value, str) and bool(_CURRENCY.match(value))


def is_amount_minor(value: object, *, allow_zero: bool = False) -> bool:
    """True for a whole number of minor units in range. bool is not an amount, nor is a float."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    low = 0 if allow_zero else 1
    return low <= value <= MAX_AMOUNT_MINOR
