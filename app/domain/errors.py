"""The one exception root. Expected rejections are result codes, never exceptions:
these are raised only for bugs and broken invariants."""


class BankrollError(Exception):
    """Root of every exception Bankroll raises on purpose."""


class InvariantViolation(BankrollError):
    """A state or posting broke a rule that must always hold: a bug, never bad input."""
