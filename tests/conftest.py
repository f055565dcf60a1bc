from __future__ import annotations

import pytest

from app.client.signed import BankrollClient
from tests.stack import Stack, running


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory):
    """Broker, PostgreSQL and Redis (embedded unless their URL is set), one worker, the web."""
    with running(tmp_path_factory.mktemp("stack")) as s:
        yield s


@pytest.fixture
async def client(stack: Stack):
    async with BankrollClient(stack.base_url) as c:
        yield c
