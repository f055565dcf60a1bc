"""Deterministic randomness of the jackpot engine.

Every draw is HMAC-SHA256 keyed by the pool's server seed over a message that names what
is drawn, so the same seed and message always give the same result: a replayed command
decides exactly as the first run did, and once a seed is revealed anyone can recompute
every draw made with it. The seed is passed in by the agent on every command that draws
and is never stored in the pool record; the record keeps only its SHA-256 commitment.

Messages:
    round trigger      f"{pool_id}:{round_id}:{tier}"          (SPEC: server seed + per-round salt)
    must-drop point    f"drop_point|{pool_id}|{tier}|{cycle}"
    must-drop nonce    f"drop_nonce|{pool_id}|{tier}|{cycle}"
    deadline winner    f"deadline_winner|{pool_id}|{tier}|{deadline_ms}"
Pool ids and tier names cannot contain ":" or "|", so the families never produce the
same message.
"""
from __future__ import annotations

import hashlib
import hmac
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

from app.domain.errors import InvariantViolation

PPB = 10**9  # odds are integers in parts per billion: 1_000_000 ppb is 1 in 1000
_WORD = 1 << 64


def seed_commitment(server_seed: bytes) -> str:
    """The published commitment of a server seed: lowercase hex SHA-256 of its bytes."""
    return hashlib.sha256(server_seed).hexdigest()


def derive_server_seed(secret: bytes, tenant_id: str, pool_id: str) -> bytes:
    """A pool's server seed, derived from the operator's jackpot secret so that no store
    of seeds is needed and every worker that takes the pool over uses the same one. Only
    its commitment is ever published; knowing one pool's seed reveals nothing of another's."""
    return hmac.new(secret, f"server_seed|{tenant_id}|{pool_id}".encode(), hashlib.sha256).digest()


def draw_below(server_seed: bytes, message: str, n: int) -> int:
    """A uniform integer in [0, n) drawn from (server_seed, message).

    The first 8 bytes of the HMAC are read as an unsigned integer. Values in the last,
    incomplete block of n are rejected and the message is redrawn with a counter
    (f"{message}#1", ...), so every result is exactly equally likely; for n = 10**9 a
    redraw happens about once in 2 * 10**10 draws."""
    if not 1 <= n <= _WORD:
        raise InvariantViolation(f"cannot draw below {n}")
    limit = _WORD - _WORD % n
    counter = 0
    while True:
        text = message if counter == 0 else f"{message}#{counter}"
        value = int.from_bytes(hmac.new(server_seed, text.encode(), hashlib.sha256).digest()[:8], "big")
        if value < limit:
            return value % n
        counter += 1


def draw_between(server_seed: bytes, message: str, low: int, high: int) -> int:
    """A uniform integer in [low, high], both ends included."""
    if high < low:
        raise InvariantViolation(f"empty range [{low}, {high}]")
    return low + draw_below(server_seed, message, high - low + 1)


def round_draw(server_seed: bytes, pool_id: str, round_id: str, tier: str) -> int:
    """The round's draw for one tier, in [0, PPB). It names no player: a trigger never
    depends on who played the round."""
    return draw_below(server_seed, f"{pool_id}:{round_id}:{tier}", PPB)


def round_wins(server_seed: bytes, pool_id: str, round_id: str, tier: str, odds_ppb: int) -> bool:
    return round_draw(server_seed, pool_id, round_id, tier) < odds_ppb


def drop_point(server_seed: bytes, pool_id: str, tier: str, cycle: int, low: int, high: int) -> tuple[int, str]:
    """The hidden must-drop point of one seeding (cycle) of a tier, and the nonce that
    blinds its commitment. Both stay secret while the server seed does."""
    point = draw_between(server_seed, f"drop_point|{pool_id}|{tier}|{cycle}", low, high)
    nonce = hmac.new(server_seed, f"drop_nonce|{pool_id}|{tier}|{cycle}".encode(), hashlib.sha256).hexdigest()
    return point, nonce


def commit_point(point: int, nonce: str) -> str:
    """Commitment published before the drop: hex SHA-256 of f"{point}:{nonce}"."""
    return hashlib.sha256(f"{point}:{nonce}".encode()).hexdigest()


def verify_reveal(commitment: str, point: int, nonce: str) -> bool:
    """True when a revealed (point, nonce) is the one committed to."""
    return hmac.compare_digest(commit_point(point, nonce), commitment)


def deadline_winner_index(server_seed: bytes, pool_id: str, tier: str, deadline_ms: int, entries: int) -> int:
    """Which entry, in [0, entries), wins a timed pool's deadline drop."""
    return draw_below(server_seed, f"deadline_winner|{pool_id}|{tier}|{deadline_ms}", entries)


def ppb_from_decimal(value: str | Decimal) -> int:
    """Odds given as a decimal probability ("0.001") in parts per billion, rounded half to
    even. Raises ValueError for anything that is not a probability."""
    try:
        probability = Decimal(value)
    except (InvalidOperation, TypeError) as exc:
        raise ValueError(f"odds {value!r} are not a decimal number") from exc
    if not probability.is_finite() or not 0 <= probability <= 1:
        raise ValueError(f"odds {value!r} are not a probability")
    return int((probability * PPB).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def ppb_to_text(odds_ppb: int) -> str:
    """Odds in ppb as a plain decimal probability: 1_000_000 -> "0.001"."""
    text = format(Decimal(odds_ppb).scaleb(-9).normalize(), "f")
    return "0" if text in ("0", "-0") else text
