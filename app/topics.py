"""Bankroll's topic names, in one place, and no Faust: the web process, the operator tools
and the benchmarks import them without importing the stream processor.

Every name is prefixed with TOPIC_PREFIX on the wire (`topic_name`)."""
from __future__ import annotations

from config import Settings

WALLET_COMMANDS = "wallet.commands"
LEDGER_POSTINGS = "ledger.postings"
GAME_ROUNDS = "game.rounds"  # game servers publish finished rounds here (JSON)
GAME_ROUND_RESULTS = "game.rounds.results"  # Bankroll's answer to each round (JSON)
# Jackpots (SPEC §3). Commands and the wallet's payout answers are keyed tenant|pool; payout
# requests tenant|player, so the wallet agent that owns the winner applies them.
JP_COMMANDS = "jp.commands"
JP_CONTRIBUTION_RECORDED = "jp.contribution.recorded"
JP_PAYOUT_REQUESTED = "jp.payout.requested"
JP_PAYOUT_CREDITED = "jp.payout.credited"
JP_PAYOUT_FAILED = "jp.payout.failed"

# Created with the configured partition count before anything is produced, so a broker that
# auto-creates topics cannot give the ones the tables are co-partitioned with another count.
BANKROLL_TOPICS = (WALLET_COMMANDS, LEDGER_POSTINGS, GAME_ROUNDS, GAME_ROUND_RESULTS, JP_COMMANDS,
                   JP_CONTRIBUTION_RECORDED, JP_PAYOUT_REQUESTED, JP_PAYOUT_CREDITED, JP_PAYOUT_FAILED)


def topic_name(settings: Settings, name: str) -> str:
    return settings.topic_prefix + name
