"""The job worker: claims jobs with a lease, runs them, retries with backoff, sweeps.

A claim is one compare-and-set UPDATE over a batch of ids (`queued` → `running`, lease set).
A running job's lease is renewed by a heartbeat; if the worker dies (SIGKILL, lost machine) the
lease expires and the sweeper of any worker puts the job back in the queue. Completions are
written in batches: while one batch commits, the next accumulates.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, and_, bindparam, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.infra import metrics
from tidings.infra.logging import get_logger
from tidings.jobs import service
from tidings.jobs.models import Job, JobStatus, PeriodicSchedule
from tidings.jobs.registry import (
    ClaimedJob,
    JobContext,
    JobRegistry,
    PermanentJobError,
    RetryLater,
)
from tidings.jobs.store import store_for
from tidings.jobs.transport import JobTransport

_log = get_logger(__name__)
MAX_ERROR_LENGTH = 4000
SWEEP_BATCH = 1000

# The hot-path statements, built once (SQLAlchemy memoizes their cache keys, so executing one
# neither builds nor compiles anything) and run as Core on a connection, without an ORM session.
_jobs: Table = Job.__table__  # type: ignore[assignment]
_c = _jobs.c
_ids = bindparam("b_ids", expanding=True, type_=_c.id.type)
_now = bindparam("b_now", type_=_c.run_at.type)
_node = bindparam("b_node", type_=_c.locked_by.type)
_lease = bindparam("b_lease", type_=_c.lease_expires_at.type)
_error = bindparam("b_error", type_=_c.last_error.type)
# Only the lease holder may touch a job: after a lease expiry another worker owns it. Found by
# id, its state only checked (`IS TRUE`: see jobs.store's claim).
_owned = update(_jobs).where(
    _c.id.in_(_ids), and_(_c.locked_by == _node, _c.status == JobStatus.RUNNING.value).is_(true())
)
_released = {"locked_by": None, "lease_expires_at": None}
_DEAD = _owned.values(status=JobStatus.DEAD.value, finished_at=_now, last_error=_error, **_released)
_RETRY = _owned.values(
    status=JobStatus.QUEUED.value,
    run_at=bindparam("b_run_at", type_=_c.run_at.type),
    published_at=None,
    last_error=_error,
    **_released,
)
_RELEASE = _owned.values(
    status=JobStatus.QUEUED.value,
    attempts=_c.attempts - 1,
    run_at=_now,
    published_at=None,
    **_released,
)
_HEARTBEAT = _owned.values(lease_expires_at=_lease)


@dataclass(frozen=True)
class WorkerConfig:
    concurrency: int = 64
    lease_seconds: float = 60.0
    sweep_interval: float = 1.0
    republish_after: float = 60.0
    backoff_base: float = 1.0
    backoff_max: float = 3600.0
    shutdown_grace: float = 30.0
    default_max_attempts: int = 5
    # While busy, a claim waits up to `claim_linger` seconds for concurrency ÷ 8 free slots.
    claim_linger: float = 0.005
    completion_linger: float = 0.01


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, never above `cap`."""
    delay = min(cap, base * 2.0 ** max(0, attempt - 1))
    return delay / 2 + random.uniform(0, delay / 2)  # noqa: S311 - jitter, not security


class Worker:
    def __init__(
        self,
        db: Database,
        transport: JobTransport,
        registry: JobRegistry,
        *,
        node_id: str,
        config: WorkerConfig | None = None,
        resources: Mapping[str, Any] | None = None,
    ) -> None:
        self._db = db
        self._store = store_for(db.dialect)
        self._transport = transport
        self._registry = registry
        self._node_id = node_id
        self._config = config or WorkerConfig()
        self._resources = resources or {}
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()  # no new work
        self._closing = asyncio.Event()  # running jobs are done: background loops end
        self._completed: list[uuid.UUID] = []
        self._completed_ready = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._receive_task: asyncio.Task[None] | None = None
        # Claims in flight and the slots their jobs will take: the receive loop reads on
        # while a claim commits (a job arriving meanwhile does not wait for it).
        self._claims: set[asyncio.Task[None]] = set()
        self._reserved = 0
        self._claim_batch = max(1, self._config.concurrency // 8)
        self._lingered = False

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def lease_seconds(self) -> float:
        return self._config.lease_seconds

    @property
    def in_flight(self) -> int:
        return len(self._running)

    async def start(self) -> None:
        await self._transport.start()
        await self._sync_periodic_schedules()
        self._receive_task = asyncio.create_task(self._receive_loop(), name="jobs-receive")
        self._loops = [
            asyncio.create_task(self._completion_loop(), name="jobs-complete"),
            asyncio.create_task(self._heartbeat_loop(), name="jobs-heartbeat"),
            asyncio.create_task(self._sweep_loop(), name="jobs-sweep"),
        ]

    async def stop(self) -> None:
        """Stop taking work, let running jobs finish within the grace period, release the rest."""
        self._stopping.set()
        self._slot_free.set()
        # Loops are asked to end rather than cancelled: a cancel in the middle of a
        # transaction could leave SQLite's write lock with a connection being torn down.
        if self._receive_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._receive_task), timeout=5)
            except TimeoutError:
                self._receive_task.cancel()
                await asyncio.gather(self._receive_task, return_exceptions=True)
        # Jobs a claim in flight wins start like any other: the grace below covers them.
        await asyncio.gather(*self._claims, return_exceptions=True)
        if self._running:
            _, still_running = await asyncio.wait(
                list(self._running.values()), timeout=self._config.shutdown_grace
            )
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
        self._closing.set()
        self._completed_ready.set()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self._flush_completions()
        await self._transport.close()

    async def _pause(self, seconds: float, until: asyncio.Event) -> bool:
        """Sleep `seconds`; True (at once) when `until` is set."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(until.wait(), seconds)
        return until.is_set()

    # -- jobs queued in this process --------------------------------------------------------

    def can_adopt(self, count: int) -> bool:
        """Would `count` jobs queued here now start at once (a slot free for each)?

        Asked before the queuing transaction commits, and nothing is reserved: transactions
        committing together may start more jobs than `concurrency` for a moment (the receive
        loop then claims nothing until slots free up)."""
        if self._stopping.is_set():
            return False
        return len(self._running) + count <= self._config.concurrency

    def adopt(self, jobs: list[ClaimedJob]) -> None:
        """Run jobs that were written already leased to this worker (`jobs.enqueue_many`).

        They skip the transport and the claim: what stands between a commit and the job's
        start is one loop turn. If this process dies first, their leases expire and the
        sweeper of any worker queues them again, as for a job that was running.
        """
        if self._closing.is_set():
            # Stopped already: nothing would wait for a task now. Their leases expire and the
            # sweeper of a worker queues them again.
            _log.warning("jobs_adopted_after_stop", count=len(jobs))
            return
        for job in jobs:
            run = self._hand_back(job) if self._stopping.is_set() else self._execute(job)
            self._running[job.id] = asyncio.create_task(run)

    async def _hand_back(self, job: ClaimedJob) -> None:
        """Too late to start (the worker is stopping): back to the queue for another worker."""
        try:
            await self._release(job)
        finally:
            self._running.pop(job.id, None)

    # -- receiving and claiming -------------------------------------------------------------

    async def _receive_loop(self) -> None:
        while not self._stopping.is_set():
            free = self._config.concurrency - len(self._running) - self._reserved
            if free <= 0:
                self._slot_free.clear()
                if not self._stopping.is_set():
                    await self._slot_free.wait()
                continue
            if free < self._claim_batch and (self._running or self._claims) and not self._lingered:
                # Busy: slots free up one by one, and a claim per slot costs a statement each.
                # Wait a moment for company; the jobs still running keep the work going.
                self._lingered = True
                await self._pause(self._config.claim_linger, self._stopping)
                continue
            self._lingered = False
            try:
                ids = await self._transport.receive(free, wait_seconds=0.5)
            except asyncio.CancelledError:
                raise
            except Exception:
                _log.exception("job_receive_failed")
                await asyncio.sleep(0.5)
                continue
            if ids:
                self._reserved += len(ids)
                claim = asyncio.create_task(self._claim_and_start(ids))
                self._claims.add(claim)
                claim.add_done_callback(self._claims.discard)

    async def _claim_and_start(self, ids: Sequence[uuid.UUID]) -> None:
        claimed: list[ClaimedJob] = []
        try:
            try:
                claimed = await self._claim(ids)
            except Exception:
                # The transport gave these ids once; try again once (e.g. on a fresh
                # connection after a database restart) before leaving them to the sweeper.
                _log.warning("job_claim_failed_retrying", count=len(ids), exc_info=True)
                await asyncio.sleep(0.1)
                claimed = await self._claim(ids)
        except Exception:
            _log.exception("job_claim_failed", count=len(ids))
        finally:
            for job in claimed:
                self._running[job.id] = asyncio.create_task(self._execute(job))
            self._reserved -= len(ids)
            if len(claimed) < len(ids):  # slots held for jobs another worker won
                self._slot_free.set()

    async def _claim(self, ids: Sequence[uuid.UUID]) -> list[ClaimedJob]:
        now = utcnow()
        lease = now + timedelta(seconds=self._config.lease_seconds)
        async with self._db.driver_connection() as conn:
            rows = await self._store.claim(conn, list(set(ids)), now, self._node_id, lease)
        for row in rows:
            metrics.JOB_START_DELAY.observe(max(0.0, (now - row[5]).total_seconds()))
        return [ClaimedJob(*row) for row in rows]

    # -- running ----------------------------------------------------------------------------

    async def _execute(self, job: ClaimedJob) -> None:
        definition = self._registry.get(job.name)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            if definition is None:
                raise PermanentJobError(f"no handler registered for job {job.name!r}")
            context = JobContext(
                job_id=job.id,
                name=job.name,
                attempt=job.attempts,
                max_attempts=job.max_attempts,
                db=self._db,
                resources=self._resources,
                local=job.local,
            )
            # A timeout scope, not wait_for(): that runs the handler in a task of its own,
            # one more loop turn before the job starts.
            async with asyncio.timeout(definition.timeout_seconds):
                await definition.handler(context, job.payload)
        except asyncio.CancelledError:
            # Shutdown ran out of grace: hand the job back, it was not its fault.
            await asyncio.shield(self._release(job))
            metrics.JOB_OUTCOMES.labels(job.name, "released").inc()
            raise
        except RetryLater as exc:
            await self._fail(job, exc, retry_in=exc.delay)
        except PermanentJobError as exc:
            await self._fail(job, exc, permanent=True)
        except Exception as exc:
            await self._fail(job, exc)
        else:
            self._completed.append(job.id)
            self._completed_ready.set()
            metrics.JOB_OUTCOMES.labels(job.name, "succeeded").inc()
        finally:
            metrics.JOB_DURATION.labels(job.name).observe(loop.time() - started)
            self._running.pop(job.id, None)
            self._slot_free.set()

    async def _fail(
        self,
        job: ClaimedJob,
        exc: BaseException,
        *,
        permanent: bool = False,
        retry_in: float | None = None,
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
        now = utcnow()
        if permanent or job.attempts >= job.max_attempts:
            statement = _DEAD
            params: dict[str, Any] = {"b_now": now}
            outcome = "dead"
            _log.warning("job_dead", job_id=str(job.id), job=job.name, error=error)
        else:
            delay = (
                retry_in
                if retry_in is not None
                else backoff_delay(
                    job.attempts, self._config.backoff_base, self._config.backoff_max
                )
            )
            statement = _RETRY
            params = {"b_run_at": now + timedelta(seconds=delay)}
            outcome = "retried"
            _log.info(
                "job_retry_scheduled", job_id=str(job.id), job=job.name, delay=round(delay, 3)
            )
        params.update(b_ids=[job.id], b_node=self._node_id, b_error=error)
        async with self._db.write_connection() as conn:
            await conn.execute(statement, params)
        metrics.JOB_OUTCOMES.labels(job.name, outcome).inc()

    async def _release(self, job: ClaimedJob) -> None:
        async with self._db.write_connection() as conn:
            await conn.execute(
                _RELEASE, {"b_ids": [job.id], "b_node": self._node_id, "b_now": utcnow()}
            )

    # -- background loops -------------------------------------------------------------------

    async def _completion_loop(self) -> None:
        while True:
            await self._completed_ready.wait()
            self._completed_ready.clear()
            if self._closing.is_set():
                return  # stop() flushes what is left
            # Nobody waits on a completion: gather a few more into the same statement.
            if await self._pause(self._config.completion_linger, self._closing):
                return
            try:
                await self._flush_completions()
            except Exception:
                _log.exception("job_completion_flush_failed")
                await asyncio.sleep(0.5)
                self._completed_ready.set()

    async def _flush_completions(self) -> None:
        if not self._completed:
            return
        batch, self._completed = self._completed, []
        try:
            async with self._db.driver_connection() as conn:
                await self._store.complete(conn, batch, self._node_id, utcnow())
        except BaseException:
            self._completed[:0] = batch
            raise

    async def _heartbeat_loop(self) -> None:
        interval = self._config.lease_seconds / 3
        # Runs until the last job is done: leases must not lapse during a graceful drain.
        while not await self._pause(interval, self._closing):
            running = list(self._running)
            if not running:
                continue
            lease = utcnow() + timedelta(seconds=self._config.lease_seconds)
            try:
                async with self._db.write_connection() as conn:
                    await conn.execute(
                        _HEARTBEAT, {"b_ids": running, "b_node": self._node_id, "b_lease": lease}
                    )
            except Exception:
                _log.exception("job_heartbeat_failed")

    async def _sweep_loop(self) -> None:
        ticks = 0
        while not self._stopping.is_set():
            try:
                await self.sweep(update_gauges=ticks % 5 == 0)
            except Exception:
                _log.exception("job_sweep_failed")
            ticks += 1
            await self._pause(self._config.sweep_interval, self._stopping)

    async def sweep(self, *, update_gauges: bool = False) -> int:
        """Recover expired leases, fire due cron schedules, re-send due unsent jobs."""
        now = utcnow()
        async with self._db.transaction() as session:
            await self._recover_expired_leases(session, now)
            await self._fire_periodic(session, now)
            stale = now - timedelta(seconds=self._config.republish_after)
            unsent = or_(Job.published_at.is_(None), Job.published_at < stale)
            due = (
                select(Job.id)
                .where(Job.status == JobStatus.QUEUED.value, Job.run_at <= now, unsent)
                .order_by(Job.run_at)
                .limit(SWEEP_BATCH)
            )
            ids = list(
                (
                    await session.execute(
                        update(Job)
                        .where(Job.id.in_(due.scalar_subquery()), unsent)
                        .values(published_at=now)
                        .returning(Job.id)
                        .execution_options(synchronize_session=False)
                    )
                ).scalars()
            )
        if ids:
            await self._transport.publish(ids)
        if update_gauges:
            await self._update_depth_gauges()
        return len(ids)

    async def _recover_expired_leases(self, session: AsyncSession, now: datetime) -> None:
        expired = and_(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
        lost = "lease expired: the worker running it stopped responding"
        await session.execute(
            update(Job)
            .where(expired, Job.attempts >= Job.max_attempts)
            .values(
                status=JobStatus.DEAD.value,
                finished_at=now,
                last_error=lost,
                locked_by=None,
                lease_expires_at=None,
            )
            .execution_options(synchronize_session=False)
        )
        recovered = (
            await session.execute(
                update(Job)
                .where(expired)
                .values(
                    status=JobStatus.QUEUED.value,
                    run_at=now,
                    published_at=None,
                    last_error=lost,
                    locked_by=None,
                    lease_expires_at=None,
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        ).all()
        if recovered:
            _log.warning("jobs_recovered_from_expired_leases", count=len(recovered))

    async def _sync_periodic_schedules(self) -> None:
        periodic = self._registry.periodic_jobs
        if not periodic:
            return
        now = utcnow()
        async with self._db.transaction() as session:
            existing = {
                row.name: row
                for row in (
                    await session.scalars(
                        select(PeriodicSchedule).where(
                            PeriodicSchedule.name.in_([p.name for p in periodic])
                        )
                    )
                ).all()
            }
            for job in periodic:
                row = existing.get(job.name)
                if row is None:
                    session.add(
                        PeriodicSchedule(
                            name=job.name, cron=job.cron, next_run_at=job.next_after(now)
                        )
                    )
                elif row.cron != job.cron:
                    row.cron = job.cron
                    row.next_run_at = job.next_after(now)

    async def _fire_periodic(self, session: AsyncSession, now: datetime) -> None:
        for job in self._registry.periodic_jobs:
            current = await session.scalar(
                select(PeriodicSchedule.next_run_at).where(PeriodicSchedule.name == job.name)
            )
            if current is None or current > now:
                continue
            won = await session.execute(
                update(PeriodicSchedule)
                .where(PeriodicSchedule.name == job.name, PeriodicSchedule.next_run_at == current)
                .values(next_run_at=job.next_after(now))
            )
            if won.rowcount == 1:  # type: ignore[attr-defined]
                await service.enqueue(
                    session,
                    job.job_name,
                    job.payload,
                    dedupe_key=f"periodic:{job.name}",
                    max_attempts=self._config.default_max_attempts,
                )

    async def _update_depth_gauges(self) -> None:
        async with self._db.read() as session:
            counts: dict[str, int] = dict(
                (
                    await session.execute(
                        select(Job.status, func.count())
                        .where(Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
                        .group_by(Job.status)
                    )
                ).all()
            )
        for status in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
            metrics.QUEUE_DEPTH.labels(status).set(counts.get(status, 0))
