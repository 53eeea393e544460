"""The job runner: enqueue in the transaction, run once, retry with backoff, then dead."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select, text, update

from tests.support.helpers import eventually
from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.jobs import service
from tidings.jobs.models import Job, JobStatus
from tidings.jobs.registry import JobContext, JobRegistry, PermanentJobError, RetryLater
from tidings.jobs.worker import backoff_delay
from tidings.runtime import Runtime
from tidings.settings import Settings


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, dict[str, Any], float]] = []

    def record(self, context: JobContext, payload: dict[str, Any]) -> None:
        self.calls.append((context.name, context.attempt, payload, time.monotonic()))


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def registry(recorder: Recorder) -> JobRegistry:
    jobs = JobRegistry()

    @jobs.job("ok")
    async def ok(context: JobContext, payload: dict[str, Any]) -> None:
        recorder.record(context, payload)

    @jobs.job("flaky")
    async def flaky(context: JobContext, payload: dict[str, Any]) -> None:
        recorder.record(context, payload)
        if context.attempt < payload["succeed_on"]:
            raise ConnectionError(f"provider down (attempt {context.attempt})")

    @jobs.job("permanent")
    async def permanent(context: JobContext, payload: dict[str, Any]) -> None:
        recorder.record(context, payload)
        raise PermanentJobError("recipient does not exist")

    @jobs.job("retry_after")
    async def retry_after(context: JobContext, payload: dict[str, Any]) -> None:
        recorder.record(context, payload)
        if context.attempt < 3:
            raise RetryLater(payload["delay"], "429 Too Many Requests")

    @jobs.job("slow")
    async def slow(context: JobContext, payload: dict[str, Any]) -> None:
        recorder.record(context, payload)
        await asyncio.sleep(payload["seconds"])
        recorder.record(context, {"finished": True})

    return jobs


@pytest.fixture
async def runtime(settings: Settings, registry: JobRegistry) -> AsyncIterator[Runtime]:
    rt = Runtime(settings, role="worker", job_registry=registry)
    await rt.start()
    yield rt
    if rt.started:
        await rt.stop()


async def _enqueue(
    rt: Runtime, name: str, payload: dict[str, Any] | None = None, **kw: Any
) -> uuid.UUID:
    async with rt.db.transaction() as session:
        return await service.enqueue(session, name, payload, **kw)


async def _job(db: Database, job_id: uuid.UUID) -> Job:
    async with db.read() as session:
        job = await session.get(Job, job_id)
        assert job is not None
        return job


async def _job_after_stop(settings: Settings, job_id: uuid.UUID) -> Job:
    db = Database(settings.effective_database_url)
    try:
        return await _job(db, job_id)
    finally:
        await db.dispose()


async def _wait_status(
    db: Database, job_id: uuid.UUID, status: JobStatus, within: float = 10
) -> Job:
    async def probe() -> Job | None:
        job = await _job(db, job_id)
        return job if job.status == status.value else None

    return await eventually(probe, within=within)


async def test_a_job_runs_once_with_its_payload(runtime: Runtime, recorder: Recorder) -> None:
    job_id = await _enqueue(runtime, "ok", {"to": "ada"})
    job = await _wait_status(runtime.db, job_id, JobStatus.SUCCEEDED)
    assert job.attempts == 1
    assert job.finished_at is not None
    assert job.locked_by is None
    await asyncio.sleep(0.3)
    assert [(c[0], c[2]) for c in recorder.calls] == [("ok", {"to": "ada"})]


async def test_rolled_back_enqueue_never_runs(runtime: Runtime, recorder: Recorder) -> None:
    with pytest.raises(ValueError, match="abort"):
        async with runtime.db.transaction() as session:
            await service.enqueue(session, "ok", {"n": 1})
            raise ValueError("abort")
    await asyncio.sleep(0.4)
    async with runtime.db.read() as session:
        assert (await session.scalars(select(Job))).all() == []
    assert recorder.calls == []


async def test_retries_with_backoff_then_succeeds(runtime: Runtime, recorder: Recorder) -> None:
    job_id = await _enqueue(runtime, "flaky", {"succeed_on": 3}, max_attempts=5)
    job = await _wait_status(runtime.db, job_id, JobStatus.SUCCEEDED)
    assert job.attempts == 3
    assert [c[1] for c in recorder.calls] == [1, 2, 3]
    assert job.last_error == "ConnectionError: provider down (attempt 2)"


async def test_exhausted_attempts_go_dead_with_last_error(runtime: Runtime) -> None:
    job_id = await _enqueue(runtime, "flaky", {"succeed_on": 99}, max_attempts=3)
    job = await _wait_status(runtime.db, job_id, JobStatus.DEAD)
    assert job.attempts == 3
    assert job.last_error == "ConnectionError: provider down (attempt 3)"


async def test_permanent_error_goes_dead_at_once(runtime: Runtime, recorder: Recorder) -> None:
    job_id = await _enqueue(runtime, "permanent", max_attempts=5)
    job = await _wait_status(runtime.db, job_id, JobStatus.DEAD)
    assert job.attempts == 1
    assert job.last_error == "PermanentJobError: recipient does not exist"
    assert len(recorder.calls) == 1


async def test_unknown_job_name_goes_dead(runtime: Runtime) -> None:
    job_id = await _enqueue(runtime, "no.such.job")
    job = await _wait_status(runtime.db, job_id, JobStatus.DEAD)
    assert job.last_error is not None
    assert "no handler registered" in job.last_error


async def test_retry_later_waits_at_least_the_given_delay(
    runtime: Runtime, recorder: Recorder
) -> None:
    job_id = await _enqueue(runtime, "retry_after", {"delay": 0.4}, max_attempts=3)
    await _wait_status(runtime.db, job_id, JobStatus.SUCCEEDED)
    times = [c[3] for c in recorder.calls]
    assert len(times) == 3
    assert times[1] - times[0] >= 0.4
    assert times[2] - times[1] >= 0.4


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for attempt, (low, high) in {1: (0.5, 1.0), 2: (1.0, 2.0), 3: (2.0, 4.0)}.items():
        samples = [backoff_delay(attempt, 1.0, 60.0) for _ in range(200)]
        assert all(low <= s <= high for s in samples)
        assert len(set(samples)) > 100  # jittered, not a fixed schedule
    assert all(backoff_delay(30, 1.0, 60.0) <= 60.0 for _ in range(100))


async def test_dedupe_key_names_one_active_job(runtime: Runtime, recorder: Recorder) -> None:
    first = await _enqueue(runtime, "ok", {"n": 1}, dedupe_key="digest:42", delay_seconds=0.5)
    second = await _enqueue(runtime, "ok", {"n": 2}, dedupe_key="digest:42", delay_seconds=0.5)
    assert first == second
    await _wait_status(runtime.db, first, JobStatus.SUCCEEDED)
    # Once finished, the key is free again.
    third = await _enqueue(runtime, "ok", {"n": 3}, dedupe_key="digest:42")
    assert third != first
    await _wait_status(runtime.db, third, JobStatus.SUCCEEDED)
    assert [c[2]["n"] for c in recorder.calls] == [1, 3]


async def test_scheduled_job_waits_for_its_time(runtime: Runtime, recorder: Recorder) -> None:
    run_at = utcnow() + timedelta(seconds=0.6)
    job_id = await _enqueue(runtime, "ok", {"n": 1}, run_at=run_at)
    await asyncio.sleep(0.3)
    assert recorder.calls == []
    await _wait_status(runtime.db, job_id, JobStatus.SUCCEEDED)
    job = await _job(runtime.db, job_id)
    assert job.finished_at is not None
    assert job.finished_at >= run_at


async def test_cancel_a_scheduled_job(runtime: Runtime, recorder: Recorder) -> None:
    job_id = await _enqueue(runtime, "ok", {}, delay_seconds=0.5)
    async with runtime.db.transaction() as session:
        assert await service.cancel(session, job_id)
    await asyncio.sleep(0.8)
    assert (await _job(runtime.db, job_id)).status == JobStatus.CANCELLED.value
    assert recorder.calls == []


async def test_expired_lease_is_recovered_and_run_again(
    runtime: Runtime, recorder: Recorder
) -> None:
    # A job claimed by a worker that vanished: running, lease already expired.
    job_id = await _enqueue(runtime, "ok", {"n": 7}, delay_seconds=60)
    async with runtime.db.transaction() as session:
        await session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                status=JobStatus.RUNNING.value,
                attempts=1,
                locked_by="ghost-worker",
                lease_expires_at=utcnow() - timedelta(seconds=1),
            )
        )
    job = await _wait_status(runtime.db, job_id, JobStatus.SUCCEEDED)
    assert job.attempts == 2
    assert [c[2] for c in recorder.calls] == [{"n": 7}]


async def test_job_lost_in_transport_is_resent_by_the_sweeper(
    runtime: Runtime, settings: Settings, recorder: Recorder
) -> None:
    # A process that committed the job and died before handing it to the transport.
    orphan_db = Database(settings.effective_database_url)
    try:
        async with orphan_db.transaction() as session:
            job_id = await service.enqueue(session, "ok", {"orphan": True})
    finally:
        await orphan_db.dispose()
    job = await _wait_status(runtime.db, job_id, JobStatus.SUCCEEDED, within=15)
    assert job.attempts == 1
    assert [c[2] for c in recorder.calls] == [{"orphan": True}]


async def test_graceful_shutdown_drains_running_jobs(
    runtime: Runtime, settings: Settings, recorder: Recorder
) -> None:
    job_id = await _enqueue(runtime, "slow", {"seconds": 0.5})
    await eventually(lambda: _started(recorder))
    await runtime.stop()
    assert recorder.calls[-1][2] == {"finished": True}
    assert (await _job_after_stop(settings, job_id)).status == JobStatus.SUCCEEDED.value


async def test_shutdown_past_grace_releases_the_job(
    settings: Settings, registry: JobRegistry, recorder: Recorder
) -> None:
    rt = Runtime(
        settings.model_copy(update={"shutdown_grace_seconds": 0.2}),
        role="worker",
        job_registry=registry,
    )
    await rt.start()
    job_id = await _enqueue(rt, "slow", {"seconds": 30})
    await eventually(lambda: _started(recorder))
    await rt.stop()
    job = await _job_after_stop(settings, job_id)
    assert job.status == JobStatus.QUEUED.value
    assert job.attempts == 0
    assert job.locked_by is None


async def _started(recorder: Recorder) -> bool:
    return bool(recorder.calls)


async def test_periodic_job_fires_once_per_tick_across_workers(
    settings: Settings, registry: JobRegistry, recorder: Recorder
) -> None:
    registry.periodic("every-second", "* * * * * *", "ok", {"tick": True})
    first = Runtime(settings, role="worker", job_registry=registry)
    second = Runtime(settings, role="worker", job_registry=registry)
    await first.start()
    await second.start()
    try:
        await asyncio.sleep(3.2)
    finally:
        await first.stop()
        await second.stop()
    ticks = [c for c in recorder.calls if c[2] == {"tick": True}]
    # Three or four seconds boundaries passed; each fired once, not once per worker.
    assert 2 <= len(ticks) <= 4


@pytest.mark.profiles("scaled")
async def test_a_claim_waiting_on_the_database_does_not_hold_up_the_next_job(
    runtime: Runtime, recorder: Recorder, settings: Settings
) -> None:
    """The receive loop reads on while a claim commits: job B, queued after job A, runs while
    A's claim still waits (here on a row lock; in production on a commit's round trip)."""
    runtime.db.hooks.local_worker = None  # through the transport and a claim, as across nodes
    publish = runtime.db.hooks.jobs_committed
    runtime.db.hooks.jobs_committed = None  # A is written but not announced yet
    first = await _enqueue(runtime, "ok", {"n": "A"})
    runtime.db.hooks.jobs_committed = publish
    dsn = settings.effective_database_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    holder = await asyncpg.connect(dsn)
    try:
        locking = holder.transaction()
        await locking.start()
        await holder.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", first)
        await runtime.transport.publish([first])
        await eventually(lambda: _claim_waits_on_lock(runtime.db), within=10)

        second = await _enqueue(runtime, "ok", {"n": "B"})
        await _wait_status(runtime.db, second, JobStatus.SUCCEEDED)
        assert [c[2] for c in recorder.calls] == [{"n": "B"}]  # A's claim is still waiting
        await locking.rollback()
    finally:
        await holder.close()
    await _wait_status(runtime.db, first, JobStatus.SUCCEEDED)
    assert [c[2] for c in recorder.calls] == [{"n": "B"}, {"n": "A"}]


async def _claim_waits_on_lock(db: Database) -> bool:
    # Asked on a connection of its own: inside the holder's transaction, pg_stat_activity is
    # a snapshot taken at its first read.
    async with db.read() as session:
        waiting = await session.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND datname = current_database() AND query LIKE 'UPDATE jobs SET status%'"
            )
        )
    return bool(waiting)
