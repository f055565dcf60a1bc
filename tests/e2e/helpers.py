from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from app.client.signed import BankrollClient
from app.domain.ledger import Posting, check_deltas_balance
from storage.postgres.stores import PostgresLedgerStore


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def signed_at(client: BankrollClient, method: str, path: str, body: dict, timestamp: int):
    """Send with an explicit timestamp: two requests with the same bytes in the same second
    carry the same signature, and the second is refused as a replay. A retry of a request
    just sent is signed a minute back (inside the allowed skew), so its signature differs
    however slowly the first one was answered."""
    import json

    raw = json.dumps(body).encode()
    return await client.call(method, path, raw, headers=client.headers(method, path, raw, timestamp))


async def create_player(client: BankrollClient, player_id: str, currency: str = "EUR") -> None:
    status, body = await client.call("POST", "/v1/players", {"player_id": player_id, "currency": currency,
                                                             "country": "DE"})
    assert status == 201, body


async def deposit(client: BankrollClient, player_id: str, amount: int, fee: int = 0) -> str:
    deposit_id = uid("dep")
    status, body = await client.call("POST", "/v1/deposits", {
        "deposit_id": deposit_id, "player_id": player_id, "amount": amount, "currency": "EUR", "method": "card",
        "idempotency_key": f"k-{deposit_id}"})
    assert (status, body["state"]) == (202, "PENDING"), body
    return deposit_id


def webhook_body(deposit_id: str, amount: int, fee: int = 0, status: str = "SUCCEEDED", event_id: str = "") -> dict:
    return {"event_id": event_id or f"evt-{deposit_id}", "deposit_id": deposit_id, "status": status,
            "amount": amount, "currency": "EUR", "fee": fee}


async def cash(client: BankrollClient, player_id: str) -> int:
    status, body = await client.call("GET", f"/v1/wallets?player_id={player_id}&types=CASH")
    assert status == 200, body
    return body["wallets"][0]["available"]


class Ledger:
    def __init__(self, dsn: str, tenant_id: str) -> None:
        self.dsn = dsn
        self.tenant_id = tenant_id

    async def __aenter__(self) -> "Ledger":
        self.pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
        self.store = PostgresLedgerStore(self.pool)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.pool.close()

    async def entries(self, operation_id: str) -> list[Posting]:
        return await self.store.entries(self.tenant_id, operation_id)

    async def count(self, operation_prefix: str = "") -> int:
        return await self.pool.fetchval(
            "SELECT count(*) FROM ledger_entries WHERE tenant_id = $1 AND operation_id LIKE $2",
            self.tenant_id, operation_prefix + "%")

    async def balances(self) -> dict[str, int]:
        balances = await self.store.account_balances(self.tenant_id)
        check_deltas_balance(balances)
        return balances

    async def wait_for_rows(self, operation_prefix: str, rows: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (found := await self.count(operation_prefix)) < rows:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{found} of {rows} ledger rows for {operation_prefix!r} after {timeout_s} s")
            await asyncio.sleep(0.05)
