from __future__ import annotations

import pytest

from app.client.signed import BankrollClient
from tests.stack import Stack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """Broker, PostgreSQL and Redis (embedded unless their URL is set), one worker, the web."""
    s = Stack(tmp_path_factory.mktemp("stack"))
    try:
        s.start_services()
        s.start_worker("worker-1")
        s.start_web()
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture
async def client(stack: Stack):
    async with BankrollClient(stack.base_url) as c:
        yield c
