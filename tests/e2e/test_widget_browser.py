"""The jackpot widget in a real browser: headless Chromium, driven over the Chrome
DevTools Protocol with aiohttp's websocket client, opens the page served by the stack's
web process and follows a pool's growth live, without a reload."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from app.client.signed import BankrollClient
from tests.e2e.helpers import uid
from tests.stack import free_port

pytestmark = pytest.mark.integration


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Chromium is not installed: `apt-get install -y chromium` (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


# ---------------------------------------------------------------- a real pool

async def create_network_pool(client: BankrollClient, pool_id: str) -> None:
    """A two-tier network pool; the major tier paid a win to player-7 (shown masked)."""
    status, body = await client.call("POST", "/v1/jp/pools", {
        "pool_id": pool_id, "name": "Mega Network", "kind": "multi_tier", "brand_ids": ["b1", "b2"],
        "region": "MT", "currency": "EUR", "contribution_bps": 100,
        "tiers": [{"name": "mini", "seed_amount": 10_000, "share_bps": 7_000},
                  {"name": "major", "seed_amount": 200_000, "share_bps": 3_000}]})
    assert status == 201, body
    status, body = await client.call("POST", "/v1/jp/triggers", {
        "trigger_id": uid("t"), "pool_id": pool_id, "tier": "major", "brand_id": "b2", "reason": "symbol",
        "selection": {"player_id": "player-7", "round_id": uid("r")}})
    assert status == 201 and body["amount"] == 200_000, body


async def grow_pool(client: BankrollClient, pool_id: str, contribution_minor: int) -> dict:
    """One contribution through the API, as a game server sends it; returns the answer
    (the amount per tier and the new sizes)."""
    status, body = await client.call("POST", "/v1/jp/contributions", {
        "contribution_id": uid("c"), "brand_id": "b1", "pool_id": pool_id, "round_id": uid("r"),
        "player_id": "player-9", "bet": {"amount": contribution_minor, "currency": "EUR"},
        "contribution": {"amount": contribution_minor, "currency": "EUR"}})
    assert status == 200, body
    return body


# ---------------------------------------------------------------- Chromium over CDP

class Page:
    """One page target over the DevTools websocket. Calls are sequential; the events that
    arrive meanwhile are kept, so the test can report the page's errors."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    async def call(self, method: str, timeout_s: float = 10.0, **params: object) -> dict:
        self.next_id += 1
        call_id = self.next_id
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        deadline = time.monotonic() + timeout_s
        while True:
            message = await self.ws.receive(timeout=max(0.01, deadline - time.monotonic()))
            if message.type is not aiohttp.WSMsgType.TEXT:
                raise AssertionError(f"DevTools connection ended during {method}: {message!r}")
            data = json.loads(message.data)
            if data.get("id") == call_id:
                if "error" in data:
                    raise AssertionError(f"{method} failed: {data['error']}")
                return data["result"]
            self.events.append(data)

    async def evaluate(self, expression: str) -> object:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, expected: object, timeout_s: float,
                       seen: list | None = None) -> float:
        """Polls until the expression has the expected value; returns the seconds it took.
        Every value on the way is appended to `seen` when given."""
        started = time.monotonic()
        value = None
        while time.monotonic() - started < timeout_s:
            value = await self.evaluate(expression)
            if seen is not None:
                seen.append(value)
            if value == expected:
                return time.monotonic() - started
            await asyncio.sleep(0.05)
        raise AssertionError(f"after {timeout_s} s {expression} is {value!r}, not {expected!r}; "
                             f"page errors: {self.errors()}")

    def errors(self) -> list[str]:
        found = []
        for event in self.events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                found.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif event.get("method") == "Log.entryAdded":
                entry = params.get("entry", {})
                # Network noise (the favicon the page does not have) is not the widget's.
                if entry.get("level") == "error" and entry.get("source") != "network":
                    found.append(f"{entry.get('source')}: {entry.get('text')}")
            elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(json.dumps(params.get("args", []))[:500])
        return found


@contextlib.asynccontextmanager
async def headless_chromium(workdir: Path) -> AsyncIterator[Page]:
    binary = chromium_binary()
    port = free_port()
    log_path = workdir / "chromium.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={workdir / 'chromium-profile'}", f"--remote-debugging-port={port}", "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    devtools = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"Chromium exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
                try:
                    async with session.get(f"{devtools}/json/version") as response:
                        if response.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"Chromium's DevTools did not answer in 30 s: {log_path.read_text()[-2000:]}")
                await asyncio.sleep(0.1)
            async with session.put(f"{devtools}/json/new?about:blank") as response:
                target = await response.json(content_type=None)
            async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                page = Page(ws)
                for domain in ("Page", "Runtime", "Log"):
                    await page.call(f"{domain}.enable")
                yield page
    finally:
        # Chromium runs in its own process group with its renderer and utility processes.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ---------------------------------------------------------------- the test

def size_of(pool_id: str, tier: str) -> str:
    selector = json.dumps(f'[data-pool="{pool_id}"][data-tier="{tier}"]')
    return (f"(() => {{ const el = document.querySelector({selector});"
            f" return el ? [el.getAttribute('data-size-minor'), el.textContent] : null; }})()")


def winner_of(pool_id: str, tier: str) -> str:
    selector = json.dumps(f'[data-pool="{pool_id}"][data-tier="{tier}"]')
    return (f"(() => {{ const el = document.querySelector({selector});"
            f" const w = el && el.parentElement.querySelector('.winner');"
            f" return w && !w.hidden ? w.textContent : null; }})()")


async def test_the_widget_page_follows_a_growing_pool_live_without_a_reload(stack, tmp_path):
    pool_id = uid("jp")
    async with BankrollClient(stack.base_url) as client, headless_chromium(tmp_path) as page:
        await create_network_pool(client, pool_id)
        url = f"{stack.base_url}/jp/widget?tenant={stack.tenant_id}&pool_id={pool_id}"
        await page.call("Page.navigate", url=url)
        await page.wait_for(size_of(pool_id, "mini"), ["10000", "EUR 100.00"], timeout_s=15)
        await page.wait_for(size_of(pool_id, "major"), ["200000", "EUR 2,000.00"], timeout_s=5)
        await page.wait_for(winner_of(pool_id, "major"), "Last winner: pl*** won EUR 2,000.00", timeout_s=5)
        assert await page.evaluate("document.querySelector('.pool h2 .name').textContent") == "Mega Network"
        assert await page.evaluate("document.body.getAttribute('data-feed')") == "stream"
        # Survives only if the page is never reloaded.
        await page.evaluate("window.widgetTestMark = 'before-growth'")

        answer = await grow_pool(client, pool_id, 100_001)
        assert answer["tiers"] == {"mini": 70_001, "major": 30_000}
        took_s = await page.wait_for(f"({size_of(pool_id, 'mini')} || [])[0]", "80001", timeout_s=5)
        texts: list[str] = []
        await page.wait_for(f"({size_of(pool_id, 'mini')} || [])[1]", "EUR 800.01", timeout_s=5, seen=texts)
        # The figure counts up through whole cents rather than jumping.
        assert any(text not in ("EUR 100.00", "EUR 800.01") for text in texts), texts
        await page.wait_for(size_of(pool_id, "major"), ["230000", "EUR 2,300.00"], timeout_s=5)

        assert await page.evaluate("window.widgetTestMark") == "before-growth"
        assert await page.evaluate("document.body.getAttribute('data-feed')") == "stream"
        assert await page.evaluate(winner_of(pool_id, "mini")) is None
        assert await page.evaluate("document.querySelectorAll('[data-pool-card]').length") == 1
        assert "player-7" not in await page.evaluate("document.body.innerText")
        assert page.errors() == []
        assert took_s < 5
