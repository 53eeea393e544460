"""Enqueueing jobs: inside the caller's transaction, handed to the transport after COMMIT.

Because the job row commits with the state that caused it, a job is never queued for a change
that rolled back, and never lost for one that committed: if the hand-off after COMMIT fails,
the sweeper finds the row and sends it.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from tidings.db.base import new_id, utcnow
from tidings.db.database import Database, LocalWorker, after_commit, driver_of, hooks_of
from tidings.infra.logging import get_logger
from tidings.jobs.models import ACTIVE_STATUSES, Job, JobStatus
from tidings.jobs.registry import ClaimedJob
from tidings.jobs.store import store_for

DEFAULT_MAX_ATTEMPTS = 5
_PENDING_KEY = "tidings.jobs_to_publish"
_DEDUPE_RACE_RETRIES = 3
_log = get_logger(__name__)
_jobs: Table = Job.__table__  # type: ignore[assignment]


def _insert_statement(dialect: str) -> Any:
    # One statement for every row: a NULL dedupe key never conflicts, and a conflicting key
    # inserts nothing and returns nothing (the caller then reads the active job's id).
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return (
        module.insert(_jobs)
        .on_conflict_do_nothing(
            index_elements=[_jobs.c.dedupe_key],
            # Literal, as in the partial index: PostgreSQL matches the predicate by its text.
            index_where=text("status IN ('queued', 'running')"),
        )
        .returning(_jobs.c.id)
    )


# Built once: SQLAlchemy memoizes a statement object's cache key, so executing one costs no
# statement construction or compilation.
_INSERT = {dialect: _insert_statement(dialect) for dialect in ("sqlite", "postgresql")}
_ACTIVE_BY_KEY = select(_jobs.c.dedupe_key, _jobs.c.id).where(
    _jobs.c.dedupe_key.in_(bindparam("keys", expanding=True)),
    _jobs.c.status.in_(ACTIVE_STATUSES),
)


def job_row(
    name: str,
    payload: dict[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    delay_seconds: float | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The column values of a new job (`published_at` is set when it is due at once), made
    at `now` (default: the current time; a batch of rows shares one)."""
    now = now or utcnow()
    if run_at is None:
        run_at = now + timedelta(seconds=delay_seconds) if delay_seconds else now
    return {
        "id": new_id(),
        "name": name,
        "payload": payload or {},
        "status": JobStatus.QUEUED.value,
        "dedupe_key": dedupe_key,
        "run_at": run_at,
        "published_at": now if run_at <= now else None,
        "attempts": 0,
        "max_attempts": max_attempts,
        "created_at": now,
    }


async def insert_jobs(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> list[uuid.UUID]:
    """Insert job rows (from `job_row`) in one statement; the job id for each row, in order.

    A row whose dedupe key names a queued or running job is not inserted: its answer is that
    job's id. The caller's transaction decides whether any of it happens.
    """
    if not rows:
        return []
    statement = _INSERT["postgresql" if conn.dialect.name == "postgresql" else "sqlite"]
    result = await conn.execute(statement, list(rows) if len(rows) > 1 else rows[0])
    inserted = set(result.scalars().all())
    answers: list[uuid.UUID] = []
    missing: list[str] = []
    for row in rows:
        answers.append(row["id"])
        if row["id"] not in inserted:
            missing.append(row["dedupe_key"])
    if not missing:
        return answers
    found = await conn.execute(_ACTIVE_BY_KEY, {"keys": missing})
    active: dict[str, uuid.UUID] = {row[0]: row[1] for row in found}
    for index, row in enumerate(rows):
        if row["id"] not in inserted:
            key = row["dedupe_key"]
            if key not in active:
                # The job holding the key finished between the INSERT and this read.
                raise DedupeRaceError(key)
            answers[index] = active[key]
    return answers


class DedupeRaceError(Exception):
    """The active job of a dedupe key finished while a new one was being refused for it."""

    def __init__(self, key: str) -> None:
        super().__init__(f"job with dedupe key {key!r} finished during the enqueue; retry")


def due_ids(rows: Sequence[dict[str, Any]], answers: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """The ids of rows that were inserted (not deduplicated) and are due now."""
    return [
        row["id"]
        for row, answer in zip(rows, answers, strict=True)
        if answer == row["id"] and row["published_at"] is not None
    ]


async def enqueue(
    session: AsyncSession,
    name: str,
    payload: dict[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    delay_seconds: float | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> uuid.UUID:
    """Queue job `name` in the caller's transaction; with `dedupe_key`, return the waiting or
    running job of that key instead.

    The job commits or rolls back with the caller's state. For a job that is not part of a
    business transaction, `submit` is cheaper: concurrent submits share one transaction.
    """
    row = job_row(
        name,
        payload,
        run_at=run_at,
        delay_seconds=delay_seconds,
        dedupe_key=dedupe_key,
        max_attempts=max_attempts,
    )
    conn = await session.connection()
    for attempt in range(_DEDUPE_RACE_RETRIES):
        try:
            [job_id] = await insert_jobs(conn, [row])
            break
        except DedupeRaceError:
            # Nothing was written: inserting again either wins the key or finds its new job.
            if attempt == _DEDUPE_RACE_RETRIES - 1:
                raise
    if job_id == row["id"] and row["published_at"] is not None:
        _publish_after_commit(session, job_id)
    return job_id


async def enqueue_many(
    session: AsyncSession,
    rows: Sequence[dict[str, Any]],
    *,
    local: Sequence[Any] | None = None,
) -> list[uuid.UUID]:
    """Queue many jobs (rows from `job_row`, without dedupe keys) in the caller's transaction,
    with one INSERT; their ids, in order.

    When this process runs a worker with a free slot for each job and every job is due now,
    the jobs are written already leased to it and start right after the COMMIT, with
    `local[i]` as their `JobContext.local` (an in-memory hand-over, e.g. what the handler
    would otherwise read back). Otherwise they go through the queue as usual.
    """
    if any(row["dedupe_key"] is not None for row in rows):
        raise ValueError("enqueue_many takes no dedupe keys; use enqueue for those")
    worker = hooks_of(session).local_worker
    now = utcnow()
    due_now = bool(rows) and all(row["run_at"] <= now for row in rows)
    if worker is not None and due_now and worker.can_adopt(len(rows)):
        return await _enqueue_adopted(session, worker, rows, local, now)
    answers = await _insert_at_driver(session, rows)
    for job_id in due_ids(rows, answers):
        _publish_after_commit(session, job_id)
    return answers


async def _insert_at_driver(
    session: AsyncSession, rows: Sequence[dict[str, Any]]
) -> list[uuid.UUID]:
    """Rows without dedupe keys, in one statement written per dialect (`jobs.store`) inside
    the session's transaction: a send batch writes up to a thousand."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    if await store_for(dialect).insert(await driver_of(session), rows):  # none can conflict
        raise RuntimeError("jobs without dedupe keys were not all inserted")
    return [row["id"] for row in rows]


async def _enqueue_adopted(
    session: AsyncSession,
    worker: LocalWorker,
    rows: Sequence[dict[str, Any]],
    local: Sequence[Any] | None,
    now: datetime,
) -> list[uuid.UUID]:
    """Insert the jobs as a claim would leave them, leased to `worker`; start them after
    COMMIT. A rollback leaves nothing behind: the rows and the hand-over go together."""
    lease = now + timedelta(seconds=worker.lease_seconds)
    leased = [
        {
            **row,
            "status": JobStatus.RUNNING.value,
            "attempts": 1,
            "locked_by": worker.node_id,
            "lease_expires_at": lease,
            "published_at": now,
        }
        for row in rows
    ]
    answers = await _insert_at_driver(session, leased)
    claimed = [
        ClaimedJob(
            row["id"],
            row["name"],
            row["payload"],
            1,
            row["max_attempts"],
            row["run_at"],
            local[index] if local is not None else None,
        )
        for index, row in enumerate(leased)
    ]
    after_commit(session, lambda: worker.adopt(claimed))
    return answers


@dataclass(slots=True)
class _Submission:
    row: dict[str, Any]
    future: asyncio.Future[uuid.UUID]


class JobQueue:
    """Enqueue jobs that are not part of a business transaction, with group commit.

    Concurrent `submit` calls are gathered into one transaction and one multi-row INSERT; each
    caller awaits its own answer. While one batch commits, the next accumulates, so a lone
    call costs one transaction and a burst costs one transaction per batch. `submit` returns
    once the job's row has committed (or the active job of its dedupe key was found). If a
    batch fails, its rows are written again one by one, so one bad row fails only its caller.

    A caller cancelled before its row is taken into a batch withdraws it; once taken, the job
    is written whatever happens to the caller.
    """

    def __init__(self, db: Database, *, max_batch: int = 1000) -> None:
        self._db = db
        self._store = store_for(db.dialect)
        self._max_batch = max_batch
        self._pending: list[_Submission] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, db: Database) -> JobQueue:
        """The queue shared by every submitter to `db` (one group per database)."""
        queue = _queues.get(db)
        if queue is None:
            queue = _queues[db] = cls(db)
        return queue

    async def submit(
        self,
        name: str,
        payload: dict[str, Any] | None = None,
        *,
        run_at: datetime | None = None,
        delay_seconds: float | None = None,
        dedupe_key: str | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> uuid.UUID:
        """Queue job `name` in a transaction of its own (shared with concurrent submits)."""
        row = job_row(
            name,
            payload,
            run_at=run_at,
            delay_seconds=delay_seconds,
            dedupe_key=dedupe_key,
            max_attempts=max_attempts,
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[uuid.UUID] = loop.create_future()
        self._pending.append(_Submission(row, future))
        flusher = self._flusher
        if flusher is None or flusher.done() or flusher.get_loop() is not loop:
            self._flusher = loop.create_task(self._flush_pending(), name="jobs-submit")
        return await future

    async def _flush_pending(self) -> None:
        while self._pending:
            try:
                await self._write_batch()
            except Exception:  # pragma: no cover - _write_batch answers every caller itself
                _log.exception("job_submit_flush_failed")
            # Let the callers just answered queue their next job before the next batch.
            await asyncio.sleep(0)

    def _take(self) -> list[_Submission]:
        batch = self._pending[: self._max_batch]
        del self._pending[: self._max_batch]
        return [s for s in batch if not s.future.done()]  # done: the caller was cancelled

    async def _write_batch(self) -> None:
        batch: list[_Submission] = []
        try:
            try:
                async with self._db.driver_connection() as conn:
                    # Taken once the write lock is held: whatever queued while waiting joins.
                    batch = self._take()
                    answers = await self._insert(conn, [s.row for s in batch])
            except Exception:
                if not batch:
                    batch = self._take()  # failed before taking (no connection): fail them
                    raise
                # Every row again on its own (on a fresh connection if the last one died), so
                # each caller gets its own answer: a bad row fails only its caller.
                for submission in batch:
                    await self._write_one(submission)
                return
            await self._answer(batch, answers)
        except Exception as exc:
            for submission in batch:
                if not submission.future.done():
                    submission.future.set_exception(exc)
        except BaseException:
            for submission in batch:
                submission.future.cancel()
            raise

    async def _insert(self, conn: Any, rows: list[dict[str, Any]]) -> list[uuid.UUID]:
        """One INSERT (autocommit) for the batch; deduplicated rows get the active job's id."""
        if not rows:
            return []
        refused_ids = await self._store.insert(conn, rows)
        refused = [row["dedupe_key"] for row in rows if row["id"] in refused_ids]
        active = await self._store.active_by_key(conn, refused) if refused else {}
        answers: list[uuid.UUID] = []
        for row in rows:
            if row["id"] not in refused_ids:
                answers.append(row["id"])
            elif row["dedupe_key"] in active:
                answers.append(active[row["dedupe_key"]])
            else:
                # The job holding the key finished between the INSERT and the read.
                raise DedupeRaceError(row["dedupe_key"])
        return answers

    async def _write_one(self, submission: _Submission) -> None:
        try:
            for attempt in range(_DEDUPE_RACE_RETRIES):
                try:
                    async with self._db.driver_connection() as conn:
                        answers = await self._insert(conn, [submission.row])
                    break
                except DedupeRaceError:
                    if attempt == _DEDUPE_RACE_RETRIES - 1:
                        raise
        except Exception as exc:
            if not submission.future.done():
                submission.future.set_exception(exc)
            return
        await self._answer([submission], answers)

    async def _answer(self, batch: list[_Submission], answers: list[uuid.UUID]) -> None:
        for submission, answer in zip(batch, answers, strict=True):
            if not submission.future.done():
                submission.future.set_result(answer)
        publish = self._db.hooks.jobs_committed
        due = due_ids([s.row for s in batch], answers)
        if publish is not None and due:
            try:
                await publish(due)
            except Exception:
                # Committed: the sweeper sends what the transport did not get.
                _log.exception("job_publish_failed", count=len(due))


_queues: weakref.WeakKeyDictionary[Database, JobQueue] = weakref.WeakKeyDictionary()


async def submit(
    db: Database,
    name: str,
    payload: dict[str, Any] | None = None,
    *,
    run_at: datetime | None = None,
    delay_seconds: float | None = None,
    dedupe_key: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> uuid.UUID:
    """Queue job `name` outside any business transaction; see `JobQueue`.

    Use `enqueue(session, ...)` instead when the job must commit or roll back with other
    writes.
    """
    return await JobQueue.of(db).submit(
        name,
        payload,
        run_at=run_at,
        delay_seconds=delay_seconds,
        dedupe_key=dedupe_key,
        max_attempts=max_attempts,
    )


def _publish_after_commit(session: AsyncSession, job_id: uuid.UUID) -> None:
    publish = hooks_of(session).jobs_committed
    if publish is None:
        return  # no transport in this process: the sweeper of a worker will send it
    pending: list[uuid.UUID] = session.info.setdefault(_PENDING_KEY, [])
    pending.append(job_id)

    async def hand_off() -> None:
        await publish(session.info.pop(_PENDING_KEY, []))

    after_commit(session, hand_off, key=_PENDING_KEY)


async def cancel(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Cancel a job that has not started; a running job cannot be cancelled."""
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.CANCELLED.value, finished_at=utcnow())
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def retry_dead(session: AsyncSession, job_id: uuid.UUID) -> bool:
    """Give a dead job a fresh set of attempts."""
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.DEAD.value)
        .values(
            status=JobStatus.QUEUED.value,
            attempts=0,
            run_at=utcnow(),
            published_at=None,
            finished_at=None,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
