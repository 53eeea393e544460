"""Jobs queued in a process that runs a worker start there, without the queue and the claim."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.support.helpers import eventually
from tidings.db.base import utcnow
from tidings.jobs import service
from tidings.jobs.models import Job, JobStatus
from tidings.jobs.registry import JobContext, JobRegistry
from tidings.runtime import Runtime
from tidings.settings import Settings


class Recorder:
    def __init__(self) -> None:
        self.runs: list[tuple[int, Any, str | None]] = []  # payload n, local, status while running
        self.release = asyncio.Event()
        self.release.set()


@pytest.fixture
async def recorded(settings: Settings) -> AsyncIterator[tuple[Runtime, Recorder]]:
    recorder = Recorder()
    registry = JobRegistry()

    @registry.job("record")
    async def record(context: JobContext, payload: dict[str, Any]) -> None:
        async with context.db.read() as session:
            status = await session.scalar(select(Job.status).where(Job.id == context.job_id))
        recorder.runs.append((payload["n"], context.local, status))
        await recorder.release.wait()

    settings = settings.model_copy(update={"worker_concurrency": 4})
    runtime = Runtime(settings, role="worker", job_registry=registry)
    await runtime.start()
    try:
        yield runtime, recorder
    finally:
        await runtime.stop()


async def _enqueue(runtime: Runtime, numbers: list[int], *, fail: bool = False) -> list[uuid.UUID]:
    rows = [service.job_row("record", {"n": n}) for n in numbers]
    async with runtime.db.transaction() as session:
        ids = await service.enqueue_many(session, rows, local=[f"local-{n}" for n in numbers])
        if fail:
            raise RuntimeError("the business transaction fails after queueing")
    return ids


async def test_a_job_queued_here_runs_here_with_what_was_handed_over(
    recorded: tuple[Runtime, Recorder],
) -> None:
    runtime, recorder = recorded
    [job_id] = await _enqueue(runtime, [1])
    await eventually(lambda: _count(recorder, 1))
    # It ran leased to this worker from its INSERT (no claim), with the in-memory hand-over.
    assert recorder.runs == [(1, "local-1", JobStatus.RUNNING.value)]
    async with runtime.db.read() as session:
        await eventually(lambda: _status(runtime, job_id, JobStatus.SUCCEEDED.value))
        job = await session.get(Job, job_id)
    assert job is not None
    assert job.attempts == 1


async def test_a_rolled_back_transaction_starts_nothing(
    recorded: tuple[Runtime, Recorder],
) -> None:
    runtime, recorder = recorded
    with pytest.raises(RuntimeError):
        await _enqueue(runtime, [1], fail=True)
    await _enqueue(runtime, [2])
    await eventually(lambda: _count(recorder, 1))
    await asyncio.sleep(0.1)
    assert [n for n, _, _ in recorder.runs] == [2]
    async with runtime.db.read() as session:
        assert len((await session.scalars(select(Job))).all()) == 1


async def test_without_a_free_slot_for_each_job_they_go_through_the_queue(
    recorded: tuple[Runtime, Recorder],
) -> None:
    runtime, recorder = recorded
    recorder.release.clear()  # hold the running jobs: 3 of the 4 slots stay taken
    await _enqueue(runtime, [1, 2, 3])
    await eventually(lambda: _count(recorder, 3))
    await _enqueue(runtime, [4, 5])  # two jobs, one free slot: both are queued and claimed
    await eventually(lambda: _count(recorder, 4))
    recorder.release.set()
    await eventually(lambda: _count(recorder, 5))
    by_number = {n: local for n, local, _ in recorder.runs}
    assert by_number == {1: "local-1", 2: "local-2", 3: "local-3", 4: None, 5: None}


async def test_a_job_due_later_is_not_started_early(recorded: tuple[Runtime, Recorder]) -> None:
    runtime, recorder = recorded
    row = service.job_row("record", {"n": 1}, run_at=utcnow() + timedelta(seconds=0.5))
    async with runtime.db.transaction() as session:
        [job_id] = await service.enqueue_many(session, [row], local=["local-1"])
    await asyncio.sleep(0.1)
    assert recorder.runs == []
    await eventually(lambda: _count(recorder, 1), within=10)
    assert recorder.runs[0][1] is None  # claimed from the queue when due
    await eventually(lambda: _status(runtime, job_id, JobStatus.SUCCEEDED.value))


async def test_a_worker_killed_before_its_adopted_job_ran_leaves_it_to_the_lease(
    settings: Settings,
) -> None:
    """The job row says `running` under this node's lease: after the lease, any worker runs it."""
    ran: list[Any] = []
    registry = JobRegistry()

    @registry.job("record")
    async def record(context: JobContext, payload: dict[str, Any]) -> None:
        ran.append(context.local)

    settings = settings.model_copy(
        update={"job_lease_seconds": 0.5, "job_sweep_interval_seconds": 0.1}
    )
    first = Runtime(settings, role="worker", job_registry=JobRegistry())
    await first.start()
    try:
        # Queued as first's own, but first never gets to run it (its worker is gone at once).
        rows = [service.job_row("record", {"n": 1})]
        async with first.db.transaction() as session:
            [job_id] = await service.enqueue_many(session, rows, local=["local"])
            assert first.worker is not None
            first.worker.adopt = lambda jobs: None  # type: ignore[method-assign]
    finally:
        await first.stop()
    second = Runtime(settings, role="worker", job_registry=registry)
    await second.start()
    try:
        await eventually(lambda: _status(second, job_id, JobStatus.SUCCEEDED.value), within=10)
        assert ran == [None]  # from the queue, after the lease expired
    finally:
        await second.stop()


async def _count(recorder: Recorder, count: int) -> bool:
    return len(recorder.runs) >= count


async def _status(runtime: Runtime, job_id: uuid.UUID, status: str) -> bool:
    async with runtime.db.read() as session:
        return await session.scalar(select(Job.status).where(Job.id == job_id)) == status
