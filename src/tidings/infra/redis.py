"""Redis clients (scaled profile): backplane, job transport, event stream, shared limits."""

from __future__ import annotations

import redis.asyncio as aioredis


def redis_client(url: str) -> aioredis.Redis:
    client: aioredis.Redis = aioredis.from_url(  # type: ignore[no-untyped-call]
        url, health_check_interval=30, socket_keepalive=True
    )
    return client
