"""Job rows: the database is the truth about every piece of work off the request path."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db.base import Base, JSONDocument, new_id, utcnow


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
_ACTIVE_PREDICATE = text("status IN ('queued', 'running')")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # A dedupe key names at most one job that is still waiting or running.
        Index(
            "uq_jobs_active_dedupe_key",
            "dedupe_key",
            unique=True,
            sqlite_where=_ACTIVE_PREDICATE,
            postgresql_where=_ACTIVE_PREDICATE,
        ),
        Index("ix_jobs_status_run_at", "status", "run_at"),
        Index("ix_jobs_status_lease", "status", "lease_expires_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    dedupe_key: Mapped[str | None] = mapped_column(String(200))
    run_at: Mapped[datetime]
    # When the job was last handed to the transport; the sweeper re-sends stale ones.
    published_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(default=0)
    max_attempts: Mapped[int]
    locked_by: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class PeriodicSchedule(Base):
    """Next fire time of each cron job; advanced by compare-and-set so one process fires it."""

    __tablename__ = "periodic_schedules"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    cron: Mapped[str] = mapped_column(String(100))
    next_run_at: Mapped[datetime]
