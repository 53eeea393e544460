"""Publish/subscribe of bytes on named channels, between the processes of one deployment.

Embedded: an in-process fan-out. Scaled: Redis pub/sub, so a message published by one `serve`
process reaches the subscribers of every other. Delivery is at-most-once by design; anything
that must not be lost is an event in the outbox, not only a backplane message.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Protocol

import redis.asyncio as aioredis

from tidings.infra.logging import get_logger

Handler = Callable[[str, bytes], Awaitable[None] | None]
_log = get_logger(__name__)


class Subscription:
    def __init__(self, unsubscribe: Callable[[], Awaitable[None]]) -> None:
        self._unsubscribe = unsubscribe

    async def close(self) -> None:
        await self._unsubscribe()


class Backplane(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, channel: str, data: bytes) -> None: ...

    async def subscribe(self, channel: str, handler: Handler) -> Subscription: ...

    async def ping(self) -> None: ...


class _HandlerTable:
    def __init__(self) -> None:
        self.handlers: dict[str, list[Handler]] = defaultdict(list)

    async def deliver(self, channel: str, data: bytes) -> None:
        for handler in list(self.handlers.get(channel, ())):
            try:
                result = handler(channel, data)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                _log.exception("backplane_handler_failed", channel=channel)


class InProcessBackplane:
    def __init__(self) -> None:
        self._table = _HandlerTable()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._table.handlers.clear()

    async def publish(self, channel: str, data: bytes) -> None:
        await self._table.deliver(channel, data)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        self._table.handlers[channel].append(handler)

        async def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._table.handlers[channel].remove(handler)

        return Subscription(unsubscribe)

    async def ping(self) -> None:
        return None


class RedisBackplane:
    """One pub/sub connection per process, multiplexing every local subscription."""

    def __init__(self, client: aioredis.Redis, *, prefix: str = "tidings:") -> None:
        self._client = client
        self._prefix = prefix
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._table = _HandlerTable()
        self._reader: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name="backplane-reader")

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def publish(self, channel: str, data: bytes) -> None:
        await self._client.publish(self._prefix + channel, data)

    async def subscribe(self, channel: str, handler: Handler) -> Subscription:
        first = not self._table.handlers.get(channel)
        self._table.handlers[channel].append(handler)
        if first:
            await self._pubsub.subscribe(self._prefix + channel)
            self._subscribed.set()

        async def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._table.handlers[channel].remove(handler)
            if not self._table.handlers.get(channel):
                self._table.handlers.pop(channel, None)
                await self._pubsub.unsubscribe(self._prefix + channel)

        return Subscription(unsubscribe)

    async def ping(self) -> None:
        await self._client.ping()

    async def _read_loop(self) -> None:
        strip = len(self._prefix)
        while True:
            await self._subscribed.wait()
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (ConnectionError, aioredis.ConnectionError):
                _log.warning("backplane_connection_lost")
                await asyncio.sleep(0.5)
                continue
            if message is None or message.get("type") != "message":
                continue
            channel = message["channel"]
            name = (channel.decode() if isinstance(channel, bytes) else channel)[strip:]
            await self._table.deliver(name, message["data"])
