"""The SDK against a real server: the realtime tests' live uvicorn server (both profiles), and
SDK clients that are closed after each test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.client.team import SdkFactory
from tests.realtime.conftest import LiveServer, live, live_server, realtime_settings
from tidings.client import TidingsClient

# The realtime tests' fixtures, for tests here too.
__all__ = ["LiveServer", "live", "live_server", "realtime_settings"]


@pytest.fixture
async def sdk(live: LiveServer) -> AsyncIterator[SdkFactory]:
    """`sdk(**options)`: a `TidingsClient` for the live server, closed at teardown."""
    made: list[TidingsClient] = []

    def make(base_url: str | None = None, **options: Any) -> TidingsClient:
        client = TidingsClient(base_url or live.base_url, **options)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.aclose()
