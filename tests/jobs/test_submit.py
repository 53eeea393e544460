"""Group-committed `submit`: concurrent enqueues outside a business transaction share one."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text

from tests.support.helpers import eventually
from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.jobs import service
from tidings.jobs.models import Job, JobStatus
from tidings.jobs.registry import JobContext, JobRegistry
from tidings.jobs.service import JobQueue, submit
from tidings.runtime import Runtime
from tidings.settings import Settings


class CountingDatabase(Database):
    """Counts the write transactions, to see that concurrent submits share them."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.write_transactions = 0

    def driver_connection(self) -> Any:
        self.write_transactions += 1
        return super().driver_connection()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[CountingDatabase]:
    database = CountingDatabase(settings.effective_database_url)
    yield database
    await database.dispose()


async def _rows(db: Database) -> dict[uuid.UUID, Job]:
    async with db.read() as session:
        return {job.id: job for job in (await session.scalars(select(Job))).all()}


async def test_concurrent_submits_share_a_transaction(db: CountingDatabase) -> None:
    ids = await asyncio.gather(*(submit(db, "ok", {"n": n}) for n in range(50)))
    assert len(set(ids)) == 50
    # The first submit opens a batch; the other 49 queued meanwhile and share it or the next.
    assert 1 <= db.write_transactions <= 2
    rows = await _rows(db)
    assert {rows[job_id].payload["n"] for job_id in ids} == set(range(50))
    assert all(row.status == JobStatus.QUEUED.value for row in rows.values())
    assert all(row.published_at is not None for row in rows.values())  # due now: published


async def test_each_caller_gets_its_own_row_back(db: CountingDatabase) -> None:
    async def one(n: int) -> tuple[int, uuid.UUID]:
        return n, await submit(db, "ok", {"n": n})

    answers = await asyncio.gather(*(one(n) for n in range(20)))
    rows = await _rows(db)
    for n, job_id in answers:
        assert rows[job_id].payload == {"n": n}


async def test_dedupe_key_within_a_batch_and_against_an_active_job(db: CountingDatabase) -> None:
    existing = await submit(db, "ok", {"n": 0}, dedupe_key="digest:1")
    ids = await asyncio.gather(
        submit(db, "ok", {"n": 1}, dedupe_key="digest:1"),
        submit(db, "ok", {"n": 2}, dedupe_key="digest:2"),
        submit(db, "ok", {"n": 3}, dedupe_key="digest:2"),
        submit(db, "ok", {"n": 4}),
    )
    assert ids[0] == existing
    assert ids[1] == ids[2]
    assert len({existing, ids[1], ids[3]}) == 3
    async with db.read() as session:
        assert await session.scalar(select(func.count()).select_from(Job)) == 3


async def test_one_bad_row_fails_only_its_caller(db: CountingDatabase) -> None:
    results = await asyncio.gather(
        submit(db, "ok", {"n": 1}),
        submit(db, "ok", {"bad": object()}),  # not JSON: fails when bound
        submit(db, "ok", {"n": 3}, dedupe_key="k"),
        submit(db, "ok", {"n": 4}, dedupe_key="k"),
        return_exceptions=True,
    )
    good = [r for i, r in enumerate(results) if i != 1]
    assert isinstance(results[1], Exception)
    assert all(isinstance(r, uuid.UUID) for r in good)
    assert good[1] == good[2]  # the dedupe answer survives the retry row by row
    rows = await _rows(db)
    assert set(rows) == {good[0], good[1]}
    assert rows[good[0]].payload == {"n": 1}


async def test_a_database_error_reaches_every_caller_of_the_batch(settings: Settings) -> None:
    db = Database(settings.effective_database_url)
    await db.dispose()

    def broken() -> Any:
        raise ConnectionError("database unreachable")

    db.driver_connection = broken  # type: ignore[method-assign]
    results = await asyncio.gather(
        *(submit(db, "ok", {"n": n}) for n in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionError) for r in results)
    # The queue is not wedged: the next submit is tried (and answered) again.
    with pytest.raises(ConnectionError):
        await submit(db, "ok", {"n": 9})


async def test_a_caller_cancelled_before_its_batch_withdraws_the_job(
    db: CountingDatabase,
) -> None:
    queue = JobQueue.of(db)
    first = asyncio.create_task(queue.submit("ok", {"n": 1}))
    withdrawn = asyncio.create_task(queue.submit("ok", {"n": 2}))
    await asyncio.sleep(0)  # both queued, no batch taken yet
    withdrawn.cancel()
    job_id = await first
    with pytest.raises(asyncio.CancelledError):
        await withdrawn
    assert set(await _rows(db)) == {job_id}


async def test_scheduled_submit_is_not_published_until_due(db: CountingDatabase) -> None:
    job_id = await submit(db, "ok", {}, delay_seconds=60)
    row = (await _rows(db))[job_id]
    assert row.published_at is None
    assert row.run_at > row.created_at


async def test_submitted_jobs_run(settings: Settings) -> None:
    ran: list[int] = []
    registry = JobRegistry()

    @registry.job("ok")
    async def ok(_context: JobContext, payload: dict[str, Any]) -> None:
        ran.append(payload["n"])

    runtime = Runtime(settings, role="worker", job_registry=registry)
    await runtime.start()
    try:
        ids = await asyncio.gather(*(submit(runtime.db, "ok", {"n": n}) for n in range(30)))

        async def all_succeeded() -> bool:
            async with runtime.db.read() as session:
                done = await session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.id.in_(ids), Job.status == JobStatus.SUCCEEDED.value)
                )
            return done == len(ids)

        await eventually(all_succeeded)
        assert sorted(ran) == list(range(30))
    finally:
        await runtime.stop()


async def test_enqueue_in_a_transaction_still_dedupes(db: CountingDatabase) -> None:
    async with db.transaction() as session:
        first = await service.enqueue(session, "ok", {"n": 1}, dedupe_key="tx")
        second = await service.enqueue(session, "ok", {"n": 2}, dedupe_key="tx")
    assert first == second
    assert await submit(db, "ok", {"n": 3}, dedupe_key="tx") == first


async def test_rows_written_by_submit_read_the_same_through_the_orm(
    db: CountingDatabase,
) -> None:
    run_at = utcnow() + timedelta(seconds=30, microseconds=123)
    payload = {"text": "héllo", "nested": {"list": [1, 2.5, None, True]}}
    job_id = await submit(db, "ok", payload, run_at=run_at, dedupe_key="same", max_attempts=7)
    row = (await _rows(db))[job_id]
    assert (row.name, row.payload, row.dedupe_key) == ("ok", payload, "same")
    assert (row.run_at, row.attempts, row.max_attempts) == (run_at, 0, 7)
    assert row.created_at <= utcnow()
    async with db.transaction() as session:  # the ORM's dedupe sees the row
        assert await service.enqueue(session, "ok", {}, dedupe_key="same") == job_id


@pytest.mark.profiles("scaled")
async def test_submit_and_claim_survive_killed_database_connections(settings: Settings) -> None:
    ran: list[int] = []
    registry = JobRegistry()

    @registry.job("ok")
    async def ok(_context: JobContext, payload: dict[str, Any]) -> None:
        ran.append(payload["n"])

    runtime = Runtime(settings, role="worker", job_registry=registry)
    await runtime.start()
    try:
        await asyncio.gather(*(submit(runtime.db, "ok", {"n": n}) for n in range(10)))
        await eventually(lambda: _ran(ran, 10))
        # What a PostgreSQL restart does to pooled connections: every other backend is gone.
        async with runtime.db.transaction() as session:
            await session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        await asyncio.gather(*(submit(runtime.db, "ok", {"n": n}) for n in range(10, 20)))
        await eventually(lambda: _ran(ran, 20))
        assert sorted(ran) == list(range(20))
    finally:
        await runtime.stop()


async def _ran(ran: list[int], count: int) -> bool:
    return len(ran) >= count
