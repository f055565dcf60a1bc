"""What every LedgerStore adapter shares for a player's posting history: the opaque page
cursor and the shape of one history row, so the in-memory and the PostgreSQL adapters
answer byte for byte alike."""
from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timedelta, timezone

from app.domain.ledger import Posting

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# entry_id is a PostgreSQL bigint, so a cursor naming a larger one cannot have come from us.
_MAX_ENTRY_ID = 2**63 - 1
_DIGITS = re.compile(rb"[1-9][0-9]{0,18}")


def ms_to_datetime(ms: int) -> datetime:
    # timedelta arithmetic keeps milliseconds exact, where ms / 1000 would pass through a float.
    return EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(dt: datetime) -> int:
    return (dt - EPOCH) // timedelta(milliseconds=1)


def iso_utc(ms: int) -> str:
    """ISO 8601 in UTC with milliseconds, e.g. 2023-11-14T22:13:20.123Z."""
    return ms_to_datetime(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def encode_cursor(entry_id: int) -> str:
    """The cursor after a page: the last entry id shown, in unpadded URL-safe base64 so it
    travels in a query string as it is and callers treat it as opaque."""
    return base64.urlsafe_b64encode(str(entry_id).encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> int:
    """The entry id a cursor names; ValueError unless it is exactly what encode_cursor makes."""
    if not isinstance(cursor, str) or not cursor:
        raise ValueError("malformed history cursor")
    try:
        raw = base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("malformed history cursor") from None
    if not _DIGITS.fullmatch(raw) or int(raw) > _MAX_ENTRY_ID:
        raise ValueError("malformed history cursor")
    entry_id = int(raw)
    # Only the canonical spelling is accepted, so one position has exactly one cursor.
    if encode_cursor(entry_id) != cursor:
        raise ValueError("malformed history cursor")
    return entry_id


def check_limit(limit: int) -> None:
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit!r}")


def history_row(entry_id: int, p: Posting) -> dict:
    return {
        "entry_id": entry_id,
        "operation_id": p.operation_id,
        "leg": p.leg,
        "debit_account": p.debit_account,
        "credit_account": p.credit_account,
        "amount_minor": p.amount_minor,
        "currency": p.currency,
        "category": p.category,
        "reason": p.reason,
        "created_at": iso_utc(p.created_at_ms),
    }
