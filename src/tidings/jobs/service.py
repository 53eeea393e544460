"""Enqueueing jobs: inside the caller's transaction, handed to the transport after COMMIT.

Because the job row commits with the state that caused it, a job is never queued for a change
that rolled back, and never lost for one that committed: if the hand-off after COMMIT fails,
the sweeper finds the row and sends it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import new_id, utcnow
from tidings.db.database import after_commit, hooks_of
from tidings.jobs.models import ACTIVE_STATUSES, Job, JobStatus

DEFAULT_MAX_ATTEMPTS = 5
_PENDING_KEY = "tidings.jobs_to_publish"


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
    """Queue job `name`; with `dedupe_key`, return the waiting/running job of that key instead."""
    now = utcnow()
    if run_at is None:
        run_at = now + timedelta(seconds=delay_seconds) if delay_seconds else now
    due_now = run_at <= now
    job_id = new_id()
    values = {
        "id": job_id,
        "name": name,
        "payload": payload or {},
        "status": JobStatus.QUEUED.value,
        "dedupe_key": dedupe_key,
        "run_at": run_at,
        "published_at": now if due_now else None,
        "attempts": 0,
        "max_attempts": max_attempts,
        "created_at": now,
    }
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(Job).values(**values)
    if dedupe_key is not None:
        statement = statement.on_conflict_do_nothing(
            index_elements=[Job.dedupe_key], index_where=Job.status.in_(ACTIVE_STATUSES)
        )
    result = await session.execute(statement.returning(Job.id))
    inserted = result.scalar_one_or_none()
    if inserted is None:
        existing: uuid.UUID = (
            await session.execute(
                select(Job.id).where(Job.dedupe_key == dedupe_key, Job.status.in_(ACTIVE_STATUSES))
            )
        ).scalar_one()
        return existing
    if due_now:
        _publish_after_commit(session, job_id)
    return job_id


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
