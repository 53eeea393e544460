"""The backplane: publish/subscribe in-process and across Redis connections."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import REDIS_URL
from tests.support.helpers import eventually
from tidings.infra.backplane import Backplane, InProcessBackplane, RedisBackplane
from tidings.infra.redis import redis_client


async def _exchange(sender: Backplane, receiver: Backplane) -> None:
    received: list[tuple[str, bytes]] = []
    subscription = await receiver.subscribe("room:1", lambda c, d: received.append((c, d)))
    other: list[bytes] = []
    await receiver.subscribe("room:2", lambda _c, d: other.append(d))
    await asyncio.sleep(0.05)
    await sender.publish("room:1", b'{"hello": 1}')

    async def got() -> bool:
        return len(received) == 1

    await eventually(got, within=5)
    assert received == [("room:1", b'{"hello": 1}')]
    assert other == []
    await subscription.close()
    await sender.publish("room:1", b"after unsubscribe")
    await asyncio.sleep(0.1)
    assert len(received) == 1


async def test_in_process_backplane() -> None:
    backplane = InProcessBackplane()
    await backplane.start()
    await _exchange(backplane, backplane)
    await backplane.close()


@pytest.mark.profiles("scaled")
async def test_redis_backplane_between_two_connections(profile: str, redis_prefix: str) -> None:
    clients = [redis_client(REDIS_URL), redis_client(REDIS_URL)]
    sender, receiver = (RedisBackplane(c, prefix=redis_prefix) for c in clients)
    await sender.start()
    await receiver.start()
    try:
        await _exchange(sender, receiver)
    finally:
        await sender.close()
        await receiver.close()
        for client in clients:
            await client.aclose()


async def test_a_failing_handler_does_not_starve_the_others() -> None:
    backplane = InProcessBackplane()
    received: list[bytes] = []

    def broken(_: str, __: bytes) -> None:
        raise RuntimeError("handler bug")

    await backplane.subscribe("c", broken)
    await backplane.subscribe("c", lambda _c, d: received.append(d))
    await backplane.publish("c", b"x")
    assert received == [b"x"]
