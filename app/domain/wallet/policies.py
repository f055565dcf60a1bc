"""Spend policies as data: which sub-wallets pay for a stake, in which order, and where
winnings go. Chosen per request by name; the decision is recorded on every posting."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SpendStep:
    wallet: str
    # A wallet the money passes through on its way to the hold: the sports policy moves
    # BONUS to WAGER first, so the turnover is visible on WAGER.
    via: str = ""


@dataclass(frozen=True, slots=True)
class SpendPolicy:
    name: str
    steps: tuple[SpendStep, ...]
    win_wallet: str = "CASH"


SPEND_POLICIES: dict[str, SpendPolicy] = {
    "casino": SpendPolicy("casino", (SpendStep("WAGER"), SpendStep("BONUS"), SpendStep("CASH"))),
    "sports": SpendPolicy("sports", (SpendStep("CASH"), SpendStep("BONUS", via="WAGER"))),
}
DEFAULT_POLICY = "casino"


@dataclass(frozen=True, slots=True)
class SpendSource:
    wallet: str
    amount_minor: int
    via: str = ""


def plan_spend(
    balances: dict[str, int], currency: str, amount_minor: int, policy: SpendPolicy
) -> tuple[SpendSource, ...] | None:
    """The sources that pay amount_minor under the policy, or None when they cannot."""
    remaining = amount_minor
    sources: list[SpendSource] = []
    for step in policy.steps:
        if remaining == 0:
            break
        available = balances.get(f"{step.wallet}:{currency}", 0)
        take = min(available, remaining)
        if take > 0:
            sources.append(SpendSource(step.wallet, take, step.via))
            remaining -= take
    return tuple(sources) if remaining == 0 else None


def describe(policy: SpendPolicy, sources: tuple[SpendSource, ...]) -> str:
    """The spend decision in words, stored as the reason of every posting it caused."""
    parts = [f"{s.wallet}{'->' + s.via if s.via else ''}={s.amount_minor}" for s in sources]
    return f"policy {policy.name}: " + ", ".join(parts)
