"""A small signing HTTP client for Bankroll (used by the tests, the benchmark and demos)."""
from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from app.api.signing import sign, sign_psp


class BankrollClient:
    def __init__(self, base_url: str, api_key: str = "dev", secret: str = "dev-secret",
                 session: aiohttp.ClientSession | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.secret = secret
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> "BankrollClient":
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    def headers(self, method: str, path_with_query: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        return {
            "X-Api-Key": self.api_key,
            "X-Timestamp": ts,
            "X-Signature": sign(self.secret, ts, method, path_with_query, body),
            "Content-Type": "application/json",
        }

    async def call(self, method: str, path_with_query: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        raw = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        hdrs = headers if headers is not None else self.headers(method, path_with_query, raw)
        async with self._session.request(method, self.base_url + path_with_query, data=raw, headers=hdrs) as resp:
            text = await resp.read()
            return resp.status, (json.loads(text) if text else None)

    async def psp_webhook(self, psp: str, secret: str, body: dict) -> tuple[int, Any]:
        raw = json.dumps(body).encode()
        hdrs = {"X-PSP-Signature": sign_psp(secret, raw), "Content-Type": "application/json"}
        async with self._session.post(f"{self.base_url}/v1/psp/{psp}/webhooks", data=raw, headers=hdrs) as resp:
            return resp.status, await resp.json()
