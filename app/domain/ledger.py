"""Ledger postings: each leg debits one account and credits another by the same amount.

Account names are stable strings so the PostgreSQL ledger, the reconciliation and the
audit trail all speak of the same thing:
    player:{player_id}:{WALLET_TYPE}:{CURRENCY}
    system:{KIND}[:{qualifier}]:{CURRENCY}       e.g. system:PSP_SETTLEMENT:sandbox:EUR
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from app.domain.errors import InvariantViolation
from app.domain.money import is_amount_minor, is_currency

WALLET_TYPES = ("CASH", "BONUS", "WAGER", "FREESPINS", "POINTS", "HOLD")


def player_account(player_id: str, wallet_type: str, currency: str) -> str:
    return f"player:{player_id}:{wallet_type}:{currency}"


def system_account(kind: str, currency: str, qualifier: str = "") -> str:
    middle = f"{kind}:{qualifier}" if qualifier else kind
    return f"system:{middle}:{currency}"


@dataclass(frozen=True, slots=True)
class Posting:
    """One leg of an operation. (tenant_id, operation_id, leg) is unique in the ledger."""

    tenant_id: str
    operation_id: str
    leg: int
    debit_account: str
    credit_account: str
    amount_minor: int
    currency: str
    category: str
    created_at_ms: int
    # Why these accounts: the spend-policy decision or the reason of a correction.
    reason: str = ""
    player_id: str = ""

    def to_wire(self) -> list:
        return [
            self.tenant_id, self.operation_id, self.leg, self.debit_account, self.credit_account,
            self.amount_minor, self.currency, self.category, self.created_at_ms, self.reason, self.player_id,
        ]

    @classmethod
    def from_wire(cls, row: list) -> "Posting":
        return cls(*row)


def check_postings(postings: Iterable[Posting]) -> None:
    """Raise InvariantViolation unless every leg is well formed.

    A leg moves one amount from one account to another in one currency, so a set of
    well-formed legs has debits equal to credits per currency by construction; what can
    go wrong is the shape of a leg, and that is what this checks."""
    seen: set[tuple[str, str, int]] = set()
    for p in postings:
        where = f"posting {p.operation_id}/{p.leg}"
        if not is_amount_minor(p.amount_minor):
            raise InvariantViolation(f"{where} has amount {p.amount_minor!r}")
        if not is_currency(p.currency):
            raise InvariantViolation(f"{where} has currency {p.currency!r}")
        if p.debit_account == p.credit_account:
            raise InvariantViolation(f"{where} debits and credits {p.debit_account}")
        if not (p.debit_account.endswith(":" + p.currency) and p.credit_account.endswith(":" + p.currency)):
            raise InvariantViolation(f"{where} names an account of another currency")
        key = (p.tenant_id, p.operation_id, p.leg)
        if key in seen:
            raise InvariantViolation(f"{where} appears twice")
        seen.add(key)


def account_deltas(postings: Iterable[Posting]) -> dict[str, int]:
    """Net change per account: credits minus debits (a credit raises a balance)."""
    deltas: dict[str, int] = defaultdict(int)
    for p in postings:
        deltas[p.debit_account] -= p.amount_minor
        deltas[p.credit_account] += p.amount_minor
    return dict(deltas)


def check_deltas_balance(deltas: dict[str, int]) -> None:
    """Raise InvariantViolation unless the net change over all accounts is zero per currency.

    Used on sums read back from storage (the ledger, a reconciliation), where a lost or
    doubled leg shows up as a non-zero total."""
    per_currency: dict[str, int] = defaultdict(int)
    for account, delta in deltas.items():
        per_currency[account.rsplit(":", 1)[-1]] += delta
    unbalanced = {c: v for c, v in per_currency.items() if v != 0}
    if unbalanced:
        raise InvariantViolation(f"debits and credits differ per currency: {unbalanced}")
