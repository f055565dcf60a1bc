import dataclasses

import pytest

from app.domain.errors import InvariantViolation
from app.domain.ledger import Posting, account_deltas, check_deltas_balance, check_postings

GOOD = Posting("dev", "op1", 0, "system:PSP_SETTLEMENT:sandbox:EUR", "player:p1:CASH:EUR", 100, "EUR", "deposit", 1)


def test_well_formed_postings_pass():
    check_postings([GOOD, dataclasses.replace(GOOD, leg=1)])


@pytest.mark.parametrize(
    "change",
    [
        {"amount_minor": 0},
        {"amount_minor": -5},
        {"amount_minor": 1.5},
        {"amount_minor": True},
        {"currency": "eur"},
        {"credit_account": "system:PSP_SETTLEMENT:sandbox:EUR"},
        {"credit_account": "player:p1:CASH:USD"},
    ],
)
def test_malformed_legs_are_refused(change):
    with pytest.raises(InvariantViolation):
        check_postings([dataclasses.replace(GOOD, **change)])


def test_duplicate_leg_is_refused():
    with pytest.raises(InvariantViolation):
        check_postings([GOOD, GOOD])


def test_deltas_sum_to_zero_per_currency():
    deltas = account_deltas([GOOD, dataclasses.replace(GOOD, leg=1, debit_account="player:p1:CASH:EUR",
                                                        credit_account="system:PSP_FEES:sandbox:EUR", amount_minor=7)])
    assert deltas == {"system:PSP_SETTLEMENT:sandbox:EUR": -100, "player:p1:CASH:EUR": 93,
                      "system:PSP_FEES:sandbox:EUR": 7}
    check_deltas_balance(deltas)


def test_lost_leg_shows_as_unbalanced():
    with pytest.raises(InvariantViolation):
        check_deltas_balance({"player:p1:CASH:EUR": 100, "system:PSP_SETTLEMENT:sandbox:EUR": -99})
