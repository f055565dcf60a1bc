"""Baseline: the same game rounds applied to a plain PostgreSQL wallet, for comparison.

One transaction per round, as a wallet built straight on SQL would do it: lock the
player's accounts (`SELECT ... FOR UPDATE`), check the funds, insert the round's legs,
update the balances. CONNECTIONS concurrent connections, PLAYERS players, on the
PostgreSQL the benchmark's stack uses (its own schema). Prints settled rounds per second.

    python -m bench.baseline_sql --rounds 20000 --players 2000
"""
from __future__ import annotations

import argparse
import asyncio
import time

import asyncpg

SCHEMA = "bankroll_baseline"

_SETUP = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.accounts (
    account text PRIMARY KEY,
    balance bigint NOT NULL CHECK (balance >= 0 OR account LIKE 'system:%')
);
CREATE TABLE {SCHEMA}.legs (
    leg_id bigserial PRIMARY KEY,
    operation_id text NOT NULL,
    leg smallint NOT NULL,
    debit_account text NOT NULL,
    credit_account text NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (operation_id, leg)
);
"""


async def setup(db: asyncpg.Pool, players: list[str], funded_minor: int) -> None:
    async with db.acquire() as conn:
        await conn.execute(_SETUP)
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.accounts (account, balance) VALUES ($1, $2)",
            [(f"player:{p}:CASH:EUR", funded_minor) for p in players]
            + [(f"player:{p}:HOLD:EUR", 0) for p in players]
            + [("system:PROVIDER_SETTLEMENT:EUR:bench", 0)])


async def play_round(conn: asyncpg.Connection, round_id: str, player: str, bet_minor: int, win_minor: int) -> bool:
    cash, hold, provider = f"player:{player}:CASH:EUR", f"player:{player}:HOLD:EUR", "system:PROVIDER_SETTLEMENT:EUR:bench"
    async with conn.transaction():
        rows = await conn.fetch(f"SELECT account, balance FROM {SCHEMA}.accounts WHERE account = ANY($1) "
                                "ORDER BY account FOR UPDATE", [cash, hold])
        balances = {r["account"]: r["balance"] for r in rows}
        if balances[cash] < bet_minor:
            return False
        legs = [(cash, hold, bet_minor), (hold, provider, bet_minor)]
        if win_minor:
            legs.append((provider, cash, win_minor))
        await conn.executemany(
            f"INSERT INTO {SCHEMA}.legs (operation_id, leg, debit_account, credit_account, amount_minor) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(f"round:bench:{round_id}", i, debit, credit, amount) for i, (debit, credit, amount) in enumerate(legs)])
        await conn.execute(f"UPDATE {SCHEMA}.accounts SET balance = balance + $2 WHERE account = $1",
                           cash, win_minor - bet_minor)
        await conn.execute(f"UPDATE {SCHEMA}.accounts SET balance = balance + $2 WHERE account = $1",
                           provider, bet_minor - win_minor)
    return True


async def run(dsn: str, rounds: int, players: int, connections: int = 20) -> float:
    """Settled rounds per second."""
    db = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
    try:
        ids = [f"bp{i}" for i in range(players)]
        await setup(db, ids, 100_000_000)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(rounds):
            queue.put_nowait(i)

        async def client() -> None:
            async with db.acquire() as conn:
                while not queue.empty():
                    i = queue.get_nowait()
                    await play_round(conn, f"r{i}", ids[i % players], 100, 150 if i % 2 == 0 else 0)

        began = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(connections)))
        elapsed = time.perf_counter() - began
        settled = await db.fetchval(f"SELECT count(DISTINCT operation_id) FROM {SCHEMA}.legs")
        async with db.acquire() as conn:
            await conn.execute(f"DROP SCHEMA {SCHEMA} CASCADE")
    finally:
        await db.close()
    if settled != rounds:
        raise AssertionError(f"{settled} of {rounds} baseline rounds settled")
    return rounds / elapsed


def main() -> None:
    from bench.common import print_load_average, running_stack

    print_load_average()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--players", type=int, default=2_000)
    parser.add_argument("--connections", type=int, default=20)
    args = parser.parse_args()
    with running_stack() as stack:
        rate = asyncio.run(run(stack.env["DATABASE_URL"], args.rounds, args.players, args.connections))
    print(f"plain PostgreSQL wallet: {args.rounds} rounds, {args.players} players, {args.connections} connections: "
          f"{rate:.0f} settled rounds/s")


if __name__ == "__main__":
    main()
