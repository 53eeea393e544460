"""How job ids travel from the enqueuing process to a worker.

The transport only carries ids and may lose them (a broker restart, a crash after COMMIT): the
job rows are the truth, and the sweeper re-sends what is due and unclaimed. So reads are
at-most-once (Redis `NOACK`), which keeps one round trip per batch.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


class JobTransport(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, job_ids: Sequence[uuid.UUID]) -> None: ...

    async def receive(self, max_count: int, wait_seconds: float) -> list[uuid.UUID]: ...


class InProcessTransport:
    """The embedded profile: enqueuer and worker share one process and one deque."""

    def __init__(self) -> None:
        self._pending: deque[uuid.UUID] = deque()
        self._ready = asyncio.Event()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        self._ready.set()

    async def publish(self, job_ids: Sequence[uuid.UUID]) -> None:
        self._pending.extend(job_ids)
        if self._pending:
            self._ready.set()

    async def receive(self, max_count: int, wait_seconds: float) -> list[uuid.UUID]:
        if not self._pending:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), wait_seconds)
            except TimeoutError:
                return []
        count = min(max_count, len(self._pending))
        return [self._pending.popleft() for _ in range(count)]


class RedisStreamTransport:
    """The scaled profile: a Redis stream read by a consumer group shared by all workers."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        stream: str = "tidings:jobs",
        group: str = "workers",
        consumer: str,
        maxlen: int = 100_000,
    ) -> None:
        self._client = client
        self._stream = stream
        self._group = group
        self._consumer = consumer
        self._maxlen = maxlen

    async def start(self) -> None:
        try:
            await self._client.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def close(self) -> None:
        return None

    async def publish(self, job_ids: Sequence[uuid.UUID]) -> None:
        if not job_ids:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.xadd(self._stream, {"id": job_id.hex}, maxlen=self._maxlen, approximate=True)
            await pipe.execute()

    async def receive(self, max_count: int, wait_seconds: float) -> list[uuid.UUID]:
        try:
            response = await self._client.xreadgroup(
                self._group,
                self._consumer,
                {self._stream: ">"},
                count=max_count,
                block=max(1, int(wait_seconds * 1000)),
                noack=True,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            await self.start()  # the stream was deleted (e.g. Redis restarted empty)
            return []
        ids: list[uuid.UUID] = []
        for _, messages in response or []:
            for _, fields in messages:
                raw = fields.get(b"id") or fields.get("id")
                if raw is not None:
                    ids.append(uuid.UUID(raw.decode() if isinstance(raw, bytes) else raw))
        return ids
