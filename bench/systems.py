"""The queues under test, each with one worker running in this process as asyncio tasks.

All three run on the same event loop as the enqueuers, with the same worker concurrency and a
no-op job that only records when it started:

* Tidings: ``Runtime(settings, role="worker")`` on a fresh deployment of one profile; each job
  is enqueued with ``jobs.service.submit(db, ...)``, the call an application makes for a job
  that is not part of a business transaction (concurrent calls share a transaction); the batch
  variant enqueues with ``jobs.service.enqueue(session, ...)`` inside one ``db.transaction()``.
  The store is the ``jobs`` table (SQLite or PostgreSQL).
* SAQ: ``Queue.from_url(redis_url, name=...)`` and ``Worker(queue, functions, concurrency=...)``
  started with ``worker.start()``, enqueued with ``queue.enqueue(...)``, as SAQ's README shows.
* arq: ``create_pool(RedisSettings)`` + ``enqueue_job(...)``, and
  ``Worker(functions=..., max_jobs=..., handle_signals=False)`` run with ``async_run()``, the
  documented way to run a worker inside another asyncio program; arq's default
  ``poll_delay`` (0.5 s) is kept.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker as ArqWorker
from arq.worker import func
from saq import Queue as SaqQueue
from saq import Worker as SaqWorker
from sqlalchemy import func as sql_func
from sqlalchemy import select

from bench.harness import Recorder, poll_until
from bench.profiles import Deployment
from tidings.jobs.models import ACTIVE_STATUSES, Job
from tidings.jobs.registry import JobContext, JobRegistry
from tidings.jobs.service import enqueue, submit
from tidings.runtime import Runtime

NOOP_JOB = "bench.noop"


class TidingsSystem:
    def __init__(self, deployment: Deployment, recorder: Recorder, *, concurrency: int) -> None:
        self.name = f"tidings-{deployment.profile}"
        self.recorder = recorder
        registry = JobRegistry()
        registry.register(NOOP_JOB, self._noop)
        self.runtime = Runtime(
            deployment.settings(worker_concurrency=concurrency),
            role="worker",
            job_registry=registry,
        )

    async def _noop(self, _context: JobContext, payload: dict[str, Any]) -> None:
        self.recorder.job_ran(payload["i"])

    async def start(self) -> None:
        await self.runtime.start()

    async def stop(self) -> None:
        await self.runtime.stop()

    async def enqueue(self, index: int) -> None:
        await submit(self.runtime.db, NOOP_JOB, {"i": index})

    async def enqueue_many(self, indices: Sequence[int]) -> None:
        """The batch variant: many jobs in one transaction (e.g. one per recipient)."""
        async with self.runtime.db.transaction() as session:
            for index in indices:
                await enqueue(session, NOOP_JOB, {"i": index})

    async def wait_all_complete(self) -> None:
        async def none_active() -> bool:
            async with self.runtime.db.read() as session:
                active = await session.scalar(
                    select(sql_func.count())
                    .select_from(Job)
                    .where(Job.name == NOOP_JOB, Job.status.in_(ACTIVE_STATUSES))
                )
            return active == 0

        await poll_until(none_active, interval=0.01)


class SaqSystem:
    name = "saq"

    def __init__(
        self, redis_url: str, queue_name: str, recorder: Recorder, *, concurrency: int
    ) -> None:
        self.recorder = recorder

        async def noop(_ctx: Any, *, i: int) -> None:
            recorder.job_ran(i)

        self.queue = SaqQueue.from_url(redis_url, name=queue_name)
        self.worker = SaqWorker(self.queue, functions=[("noop", noop)], concurrency=concurrency)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.queue.connect()
        self._task = asyncio.create_task(self.worker.start(), name="saq-worker")

    async def stop(self) -> None:
        await self.worker.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await self.queue.disconnect()

    async def enqueue(self, index: int) -> None:
        await self.queue.enqueue("noop", i=index)

    async def wait_all_complete(self) -> None:
        async def none_incomplete() -> bool:
            return await self.queue.count("incomplete") == 0

        await poll_until(none_incomplete)


class ArqSystem:
    name = "arq"

    def __init__(
        self, redis_url: str, queue_name: str, recorder: Recorder, *, concurrency: int
    ) -> None:
        self.recorder = recorder
        self._settings = RedisSettings.from_dsn(redis_url)
        self._queue_name = queue_name
        self._concurrency = concurrency
        self._pool: ArqRedis | None = None
        self._worker: ArqWorker | None = None
        self._task: asyncio.Task[None] | None = None

    async def _noop(self, ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> None:
        self.recorder.job_ran(args[0])

    async def start(self) -> None:
        self._pool = await create_pool(self._settings, default_queue_name=self._queue_name)
        self._worker = ArqWorker(
            functions=[func(self._noop, name="noop")],
            queue_name=self._queue_name,
            redis_settings=self._settings,
            max_jobs=self._concurrency,
            handle_signals=False,
        )
        self._task = asyncio.create_task(self._worker.async_run(), name="arq-worker")

    async def stop(self) -> None:
        if self._worker is not None:
            await self._worker.close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._pool is not None:
            await self._pool.aclose()

    async def enqueue(self, index: int) -> None:
        assert self._pool is not None
        # Job ids carry the queue name (which carries the run tag) so cleanup finds every key.
        await self._pool.enqueue_job("noop", index, _job_id=f"{self._queue_name}:{index}")

    async def wait_all_complete(self) -> None:
        pool = self._pool
        assert pool is not None

        async def queue_empty() -> bool:
            waiting: int = await pool.zcard(self._queue_name)
            return waiting == 0

        await poll_until(queue_empty)
