"""Housekeeping: purge finished jobs, dispatched events, the dedupe ledger and expired
idempotency keys after their retention."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete

from tidings.db.base import utcnow
from tidings.delivery.idempotency import purge_expired
from tidings.events.models import Event, ProcessedEvent
from tidings.jobs.models import Job, JobStatus
from tidings.jobs.registry import JobContext, JobRegistry

PURGE_JOB = "maintenance.purge"
EVENT_RETENTION = timedelta(days=7)


async def purge(context: JobContext, _: dict[str, Any]) -> None:
    settings = context.resources["settings"]
    now = utcnow()
    job_cutoff = now - timedelta(hours=settings.job_retention_hours)
    async with context.db.transaction() as session:
        await session.execute(
            delete(Job).where(
                Job.status.in_([JobStatus.SUCCEEDED.value, JobStatus.CANCELLED.value]),
                Job.finished_at < job_cutoff,
            )
        )
        await session.execute(
            delete(Event).where(
                Event.dispatched_at.is_not(None), Event.occurred_at < now - EVENT_RETENTION
            )
        )
        await session.execute(
            delete(ProcessedEvent).where(ProcessedEvent.processed_at < now - EVENT_RETENTION)
        )
        await purge_expired(session)


def register(registry: JobRegistry) -> None:
    registry.register(PURGE_JOB, purge)
    registry.periodic(PURGE_JOB, "17 * * * *", PURGE_JOB)
