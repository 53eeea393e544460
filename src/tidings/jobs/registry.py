"""Job handlers and cron schedules, registered by name."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from croniter import croniter

from tidings.db.database import Database


class RetryLater(Exception):  # noqa: N818 - it is an instruction, not an error
    """Raise from a handler to be retried after `delay` seconds (e.g. a provider's Retry-After)."""

    def __init__(self, delay: float, reason: str = "retry requested") -> None:
        super().__init__(reason)
        self.delay = max(0.0, delay)


class PermanentJobError(Exception):
    """Raise from a handler when retrying cannot help: the job goes straight to dead."""


@dataclass(frozen=True)
class JobContext:
    job_id: uuid.UUID
    name: str
    attempt: int
    max_attempts: int
    db: Database
    resources: Mapping[str, Any] = field(default_factory=dict)
    # What the code that queued the job handed this process's worker with it (never stored):
    # set only for a job run where it was queued, straight after the COMMIT (`enqueue_many`).
    local: Any = None


@dataclass(frozen=True)
class ClaimedJob:
    """A job leased to a worker, as the claim (or an adopting enqueue) hands it over."""

    id: uuid.UUID
    name: str
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    run_at: datetime
    local: Any = None  # see JobContext.local


JobHandler = Callable[[JobContext, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class JobDefinition:
    name: str
    handler: JobHandler
    max_attempts: int | None = None
    timeout_seconds: float | None = None


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    cron: str
    job_name: str
    payload: dict[str, Any] = field(default_factory=dict)

    def next_after(self, moment: datetime) -> datetime:
        result: datetime = croniter(self.cron, moment).get_next(datetime)
        return result


class JobRegistry:
    def __init__(self) -> None:
        self._jobs: dict[str, JobDefinition] = {}
        self._periodic: dict[str, PeriodicJob] = {}

    def register(
        self,
        name: str,
        handler: JobHandler,
        *,
        max_attempts: int | None = None,
        timeout_seconds: float | None = None,
    ) -> None:
        if name in self._jobs and self._jobs[name].handler is not handler:
            raise ValueError(f"job {name!r} is already registered")
        self._jobs[name] = JobDefinition(name, handler, max_attempts, timeout_seconds)

    def job(
        self, name: str, *, max_attempts: int | None = None, timeout_seconds: float | None = None
    ) -> Callable[[JobHandler], JobHandler]:
        def decorate(handler: JobHandler) -> JobHandler:
            self.register(name, handler, max_attempts=max_attempts, timeout_seconds=timeout_seconds)
            return handler

        return decorate

    def periodic(
        self, name: str, cron: str, job_name: str, payload: dict[str, Any] | None = None
    ) -> None:
        if not croniter.is_valid(cron):
            raise ValueError(f"invalid cron expression {cron!r} for {name!r}")
        self._periodic[name] = PeriodicJob(name, cron, job_name, payload or {})

    def get(self, name: str) -> JobDefinition | None:
        return self._jobs.get(name)

    @property
    def periodic_jobs(self) -> list[PeriodicJob]:
        return list(self._periodic.values())


# The process-wide registry; domains register their jobs at import time.
registry = JobRegistry()
