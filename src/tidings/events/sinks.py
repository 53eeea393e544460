"""Live consumers that carry committed events out of the process."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from tidings.events.dispatcher import DispatchedEvent


class RedisEventStream:
    """Appends every event to a capped Redis stream (the event-topic role), for consumer groups
    in other services. Redelivery after a crash appends again; readers dedupe on `id`."""

    name = "redis-event-stream"

    def __init__(self, client: aioredis.Redis, *, stream: str, maxlen: int) -> None:
        self._client = client
        self._stream = stream
        self._maxlen = maxlen

    async def handle(self, events: Sequence[DispatchedEvent]) -> None:
        async with self._client.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.xadd(
                    self._stream,
                    {"id": str(event.id), "type": event.type, "data": event.json},
                    maxlen=self._maxlen,
                    approximate=True,
                )
            await pipe.execute()
