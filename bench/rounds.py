"""Benchmark: settled game rounds per second through the `game.rounds` stream, counted
only when every posting of every round is committed in PostgreSQL, against a plain
PostgreSQL wallet (bench/baseline_sql.py) on the same PostgreSQL in the same run.

Funds many players, publishes N rounds (stake and, for half, a win) as fast as the
producer can, and measures from the first send to the moment the last round's ledger
rows are committed; prints the CPU milliseconds per settled round of every process and
of the workers together, then checks that nothing was lost or doubled (each round's
operation id has exactly its legs in the ledger) and that every player's CASH balance is
exact, in the ledger and through GET /v1/wallets; then the baseline's rate and the ratio.

With --compare-workers it does all that twice with the same load, each time on a fresh
stack: one worker, then two (once the two announce in Redis that they split the
partitions, and checking that they still hold the same ones at the end), and prints the
workers' CPU per round with two over one against the target (at most 1.2: within 20 %).

    python -m bench.rounds --rounds 20000
    python -m bench.rounds --compare-workers
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer

from app.api.bus import bootstrap_servers
from app.client.signed import BankrollClient
from app.messages import wallet_key
from app.topics import GAME_ROUNDS, topic_name
from bench.common import (add_baseline_arguments, announced_partitions, cpu_per_operation_line,
                          create_funded_players, measure_baseline, partitions_split, print_load_average, running_stack,
                          stack_cpu_s, target_line, wait_partitions_split, worker_cpu_ms)

FUNDED_MINOR = 100_000_000
BET_MINOR, WIN_MINOR = 100, 150


def wins(i: int) -> bool:
    return i % 2 == 0


def partitions_text(stack, announced: dict[str, list[int]]) -> str:
    names = {str(proc.pid): name for name, proc in stack.workers.items()}
    return "; ".join(f"{names.get(worker_id.rsplit('-', 1)[-1], worker_id)} {parts}"
                     for worker_id, parts in sorted(announced.items()))


async def check_rounds(db: asyncpg.Pool, client: BankrollClient, tenant_id: str, tag: str, ids: list[str],
                       rounds: int) -> None:
    """Nothing lost or doubled: each round's operation id has exactly its legs. Balances
    exact: each player's CASH, from the ledger and from the wallet agent (GET /v1/wallets),
    is the funding less the stakes plus the wins of its rounds."""
    expected_legs: dict[str, int] = {}
    expected_cash = {p: FUNDED_MINOR for p in ids}
    for i in range(rounds):
        player = ids[i % len(ids)]
        expected_legs[f"round:bench:r-{tag}-{i}:{player}"] = 3 if wins(i) else 2
        expected_cash[player] += (WIN_MINOR if wins(i) else 0) - BET_MINOR
    rows = await db.fetch("SELECT operation_id, count(*) AS legs FROM ledger_entries WHERE tenant_id = $1 "
                          "AND operation_id LIKE $2 GROUP BY operation_id", tenant_id, f"round:bench:r-{tag}-%")
    found = {r["operation_id"]: r["legs"] for r in rows}
    lost = sum(1 for op in expected_legs if op not in found)
    wrong = sum(1 for op, legs in found.items() if op in expected_legs and legs != expected_legs[op])
    unexpected = sum(1 for op in found if op not in expected_legs)
    exact = sum(1 for op, legs in found.items() if expected_legs.get(op) == legs)
    print(f"ledger: {exact}/{rounds} rounds with exactly their legs; {lost} lost, {wrong} with legs missing or "
          f"doubled, {unexpected} unknown   {'PASS' if exact == rounds and not unexpected else 'MISS'}")

    accounts = {f"player:{p}:CASH:EUR": p for p in ids}
    rows = await db.fetch(
        "SELECT account, sum(delta)::bigint AS balance FROM ("
        " SELECT credit_account AS account, amount_minor AS delta FROM ledger_entries"
        "  WHERE tenant_id = $1 AND credit_account = ANY($2::text[])"
        " UNION ALL"
        " SELECT debit_account, -amount_minor FROM ledger_entries"
        "  WHERE tenant_id = $1 AND debit_account = ANY($2::text[])) AS moves GROUP BY account",
        tenant_id, list(accounts))
    in_ledger = sum(1 for r in rows if r["balance"] == expected_cash[accounts[r["account"]]])

    async def cash(player: str) -> int | None:
        status, body = await client.call("GET", f"/v1/wallets?player_id={player}&types=CASH")
        return body["wallets"][0]["available"] if status == 200 and body["wallets"] else None

    # The wallet cache is written right after the batch commits: give it a moment to catch up.
    deadline, wrong_players = time.monotonic() + 10, list(ids)
    while wrong_players:
        answers = []
        for start in range(0, len(wrong_players), 100):
            chunk = wrong_players[start:start + 100]
            answers.extend(zip(chunk, await asyncio.gather(*(cash(p) for p in chunk))))
        wrong_players = [p for p, got in answers if got != expected_cash[p]]
        if not wrong_players or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    through_api = len(ids) - len(wrong_players)
    print(f"balances: CASH exact for {in_ledger}/{len(ids)} players in the ledger, {through_api}/{len(ids)} through "
          f"GET /v1/wallets   {'PASS' if in_ledger == through_api == len(ids) else 'MISS'}")


async def run(stack, rounds: int, players: int, baseline_rounds: int, baseline_players: int) -> float:
    """Prints the figures of one stack; returns the workers' CPU ms per settled round."""
    split_before = None
    if len(stack.workers) > 1:
        split_before = await wait_partitions_split(stack)
        print(f"partitions split between the workers (Redis): {partitions_text(stack, split_before)}", flush=True)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    client = BankrollClient(stack.base_url, session=session)
    tag = str(int(time.time()))
    ids = [f"rp-{tag}-{i}" for i in range(players)]
    await create_funded_players(client, ids, FUNDED_MINOR)

    settings = stack.settings
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers(settings.kafka_url), linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    legs = 0
    cpu_before = stack_cpu_s(stack)
    began = time.perf_counter()
    for i in range(rounds):
        win = WIN_MINOR if wins(i) else 0
        legs += 3 if win else 2
        player = ids[i % players]
        message = {"round_id": f"r-{tag}-{i}", "tenant_id": stack.tenant_id, "player_id": player,
                   "provider": "bench", "bet": {"amount": BET_MINOR, "currency": "EUR"},
                   "win": {"amount": win, "currency": "EUR"}}
        # Keyed as the README asks of game servers, so each round goes straight to its actor.
        await producer.send(topic_name(settings, GAME_ROUNDS), json.dumps(message).encode(),
                            key=wallet_key(stack.tenant_id, player))
    await producer.flush()
    sent = time.perf_counter() - began
    await producer.stop()
    print(f"published {rounds} rounds in {sent:.1f} s ({rounds / sent:.0f}/s)")

    db = await asyncpg.create_pool(stack.env["DATABASE_URL"], min_size=1, max_size=2)
    deadline = time.monotonic() + 600
    found = 0
    while time.monotonic() < deadline:
        found = await db.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE tenant_id = $1 AND operation_id LIKE $2",
            stack.tenant_id, f"round:bench:r-{tag}-%")
        if found >= legs:
            break
        await asyncio.sleep(0.5)
    done = time.perf_counter() - began
    cpu_after = stack_cpu_s(stack)
    rate = rounds / done
    per_round = worker_cpu_ms(cpu_before, cpu_after, rounds)
    print(f"{found}/{legs} ledger rows committed; {rounds} rounds settled end to end in {done:.1f} s: "
          f"{rate:.0f} rounds/s")
    print(cpu_per_operation_line(cpu_before, cpu_after, rounds, "settled round"))
    print(f"worker CPU per settled round ({len(stack.workers)} worker(s) together): {per_round:.3f} ms")
    try:
        await check_rounds(db, client, stack.tenant_id, tag, ids, rounds)
    finally:
        await session.close()
        await db.close()
    if split_before is not None:
        split_after = await announced_partitions(stack)
        same = split_after == split_before and partitions_split(stack, split_after)
        print(f"partitions at the end: {partitions_text(stack, split_after)}   "
              f"{'PASS (split, unchanged)' if same else 'MISS (moved or not split)'}")
    baseline = await measure_baseline(stack, baseline_rounds, baseline_players)
    print(f"Bankroll / baseline = {rate:.0f} / {baseline:.0f} = {rate / baseline:.2f}", flush=True)
    return per_round


def compare_workers(args: argparse.Namespace) -> None:
    per_round: dict[int, float] = {}
    for workers in (1, 2):
        print(f"--- {workers} worker(s), fresh stack, {args.rounds} rounds over {args.players} players", flush=True)
        with running_stack(workers) as stack:
            per_round[workers] = asyncio.run(run(stack, args.rounds, args.players, args.baseline_rounds,
                                                 args.baseline_players))
    print(f"worker CPU per settled round: 1 worker {per_round[1]:.3f} ms, 2 workers {per_round[2]:.3f} ms")
    print(target_line("2 workers / 1 worker, CPU per round", per_round[2] / per_round[1], 1.2, unit="x"))


def main() -> None:
    print_load_average()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--players", type=int, default=2_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--compare-workers", action="store_true",
                        help="one worker, then two, on fresh stacks with the same load (ignores --workers)")
    add_baseline_arguments(parser)
    args = parser.parse_args()
    # The baseline plays the same rounds over the same number of players unless told otherwise.
    args.baseline_rounds = args.baseline_rounds or args.rounds
    args.baseline_players = args.baseline_players or args.players
    if args.compare_workers:
        compare_workers(args)
        return
    with running_stack(args.workers) as stack:
        asyncio.run(run(stack, args.rounds, args.players, args.baseline_rounds, args.baseline_players))


if __name__ == "__main__":
    main()
