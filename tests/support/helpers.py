"""Small helpers shared by tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from tidings.events.dispatcher import DispatchedEvent
from tidings.settings import Settings

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T]], *, within: float = 10.0, interval: float = 0.02
) -> T:
    """Poll `probe` until it returns a truthy value; fail with the last value after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s (last value: {value!r})")
        await asyncio.sleep(interval)


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """`app` started (its lifespan run), and a client that calls it in-process."""
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


def on_own_database(settings: Settings, directory: Path) -> Settings:
    """The same embedded settings on a data directory and database of their own: a second app
    in the same test, compared with the first."""
    return settings.model_copy(
        update={
            "data_dir": directory / "data",
            "database_url": f"sqlite+aiosqlite:///{directory / 'tidings.db'}",
        }
    )


class CollectingConsumer:
    """A live consumer that keeps what it receives (and can be told to fail a few times)."""

    def __init__(self, name: str = "collector", fail_times: int = 0) -> None:
        self.name = name
        self.received: list[DispatchedEvent] = []
        self.batches = 0
        self._fail_times = fail_times

    async def handle(self, events: Sequence[DispatchedEvent]) -> None:
        self.batches += 1
        if self._fail_times > 0:
            self._fail_times -= 1
            raise ConnectionError("consumer temporarily down")
        self.received.extend(events)

    def unique(self) -> list[DispatchedEvent]:
        seen: set[object] = set()
        result = []
        for event in self.received:
            if event.id not in seen:
                seen.add(event.id)
                result.append(event)
        return result
