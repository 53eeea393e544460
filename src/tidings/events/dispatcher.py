"""The outbox dispatcher: hands committed events, in order per stream, to consumers.

One dispatcher per cluster is active (it holds the `outbox-dispatcher` lease); every other
process keeps a standby that takes over when the lease expires. For each batch of undispatched
events, oldest first:

1. live consumers (backplane, event stream, in-process callbacks) get the batch; they may see it
   again after a crash, so they dedupe by event id;
2. transactional consumers write what they derive (audit rows, jobs) in the same transaction
   that marks the batch dispatched, so for them each event counts exactly once.

A crash anywhere before step 2 commits leaves the rows undispatched; the next leader sends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.db.leases import acquire_lease, release_lease
from tidings.events.models import Event
from tidings.infra import metrics
from tidings.infra.logging import get_logger

LEASE_NAME = "outbox-dispatcher"
MAX_INFLIGHT_BATCHES = 10
_TABLE = Event.metadata.tables["events"]
# In the order of DispatchedEvent's fields.
_COLUMNS = (
    _TABLE.c.id,
    _TABLE.c.position,
    _TABLE.c.type,
    _TABLE.c.workspace_id,
    _TABLE.c.stream_key,
    _TABLE.c.stream_seq,
    _TABLE.c.payload,
    _TABLE.c.occurred_at,
)
_log = get_logger(__name__)


@dataclass(frozen=True, slots=False)
class DispatchedEvent:
    """An immutable view of a committed event, serialised once for every consumer."""

    id: uuid.UUID
    position: int
    type: str
    workspace_id: uuid.UUID | None
    stream_key: str
    stream_seq: int
    payload: dict[str, Any]
    occurred_at: datetime

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "workspace_id": str(self.workspace_id) if self.workspace_id else None,
            "stream": self.stream_key,
            "seq": self.stream_seq,
            "payload": self.payload,
            "occurred_at": self.occurred_at.isoformat(),
        }

    @cached_property
    def json(self) -> bytes:
        return orjson.dumps(self.as_dict())


class LiveConsumer(Protocol):
    """Receives each batch at least once, before it is marked dispatched."""

    name: str

    async def handle(self, events: Sequence[DispatchedEvent]) -> None: ...


class TransactionalConsumer(Protocol):
    """Writes its effects in the transaction that marks the batch dispatched (exactly once)."""

    name: str

    async def handle(self, session: AsyncSession, events: Sequence[DispatchedEvent]) -> None: ...


class OutboxDispatcher:
    def __init__(
        self,
        db: Database,
        *,
        node_id: str,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        lease_seconds: float = 10.0,
    ) -> None:
        self._db = db
        self._node_id = node_id
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._lease_seconds = lease_seconds
        self._live: list[LiveConsumer] = []
        self._transactional: list[TransactionalConsumer] = []
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._leader_until = 0.0
        self.is_leader = False
        # Batches handed to live consumers whose "dispatched" mark is not committed yet.
        self._inflight: set[int] = set()
        # Marked and committed; leaves `_inflight` only before the next read begins, so a read
        # that started before the mark committed can never hand those events out again.
        self._marked: list[int] = []
        self._marks: asyncio.Queue[list[DispatchedEvent]] = asyncio.Queue()
        self._marker: asyncio.Task[None] | None = None

    def add_live(self, consumer: LiveConsumer) -> None:
        self._live.append(consumer)

    def add_transactional(self, consumer: TransactionalConsumer) -> None:
        self._transactional.append(consumer)

    def poke(self) -> None:
        """Something was committed: look now rather than at the next poll."""
        self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-dispatcher")
        self._marker = asyncio.create_task(self._mark_loop(), name="outbox-marker")

    async def stop(self) -> None:
        self._stopping.set()
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._marker is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._marks.join(), timeout=self._lease_seconds)
            self._marker.cancel()
            await asyncio.gather(self._marker, return_exceptions=True)
        if self.is_leader:
            await release_lease(self._db, LEASE_NAME, self._node_id)
            self.is_leader = False

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while not self._stopping.is_set():
            try:
                if loop.time() >= self._leader_until:
                    await self._renew_leadership(loop.time())
                if not self.is_leader:
                    await self._sleep(self._lease_seconds / 3)
                    continue
                dispatched = await self.dispatch_once()
                failures = 0
                if dispatched == 0:
                    await self._sleep(self._poll_interval)
            except Exception:
                failures += 1
                _log.exception("outbox_dispatch_failed", failures=failures)
                await self._sleep(min(0.05 * 2**failures, 5.0))

    async def _renew_leadership(self, now: float) -> None:
        was_leader = self.is_leader
        self.is_leader = await acquire_lease(
            self._db, LEASE_NAME, self._node_id, self._lease_seconds
        )
        # Renew well before expiry so a healthy leader never loses the lease to a standby.
        self._leader_until = now + self._lease_seconds / 3 if self.is_leader else 0.0
        if self.is_leader != was_leader:
            _log.info("outbox_leadership_changed", leader=self.is_leader, node=self._node_id)

    async def _sleep(self, seconds: float) -> None:
        self._wakeup.clear()
        if self._stopping.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)

    async def dispatch_once(self) -> int:
        """Hand one batch to the live consumers; return how many events it held.

        Marking the batch dispatched (with the transactional consumers) happens in a separate
        task, so the next batch does not wait for the database's write lock.
        """
        self._wakeup.clear()
        if len(self._inflight) >= MAX_INFLIGHT_BATCHES * self._batch_size:
            await self._marks.join()  # back-pressure: the marker is behind
        self._inflight.difference_update(self._marked)
        self._marked.clear()
        async with self._db.read_engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(*_COLUMNS)
                    .where(_TABLE.c.dispatched_at.is_(None))
                    .order_by(_TABLE.c.position)
                    .limit(self._batch_size + len(self._inflight))
                )
            ).all()
        batch = [DispatchedEvent(*row) for row in rows if row.position not in self._inflight][
            : self._batch_size
        ]
        if not batch:
            if not self._inflight:
                metrics.OUTBOX_LAG.set(0)
            return 0
        metrics.OUTBOX_LAG.set(max(0.0, (utcnow() - batch[0].occurred_at).total_seconds()))
        for consumer in self._live:
            await consumer.handle(batch)
        now = utcnow()
        for event in batch:
            metrics.OUTBOX_DISPATCH_LATENCY.observe((now - event.occurred_at).total_seconds())
        metrics.OUTBOX_DISPATCHED.inc(len(batch))
        self._inflight.update(event.position for event in batch)
        self._marks.put_nowait(batch)
        # A full batch means more are waiting: go again without sleeping.
        if len(batch) == self._batch_size:
            self._wakeup.set()
        return len(batch)

    async def _mark_loop(self) -> None:
        while True:
            batch = await self._marks.get()
            taken = 1
            while not self._marks.empty():  # coalesce what queued up meanwhile, in order
                batch = batch + self._marks.get_nowait()
                taken += 1
            failures = 0
            while True:
                try:
                    await self._mark(batch)
                    break
                except Exception:
                    failures += 1
                    _log.exception("outbox_mark_failed", failures=failures)
                    await asyncio.sleep(min(0.05 * 2**failures, 5.0))
            self._marked.extend(event.position for event in batch)
            for _ in range(taken):
                self._marks.task_done()

    async def _mark(self, batch: list[DispatchedEvent]) -> None:
        async with self._db.transaction() as session:
            marked = set(
                (
                    await session.execute(
                        update(_TABLE)
                        .where(
                            _TABLE.c.position.in_([event.position for event in batch]),
                            _TABLE.c.dispatched_at.is_(None),
                        )
                        .values(dispatched_at=utcnow())
                        .returning(_TABLE.c.position)
                    )
                ).scalars()
            )
            # Only events this transaction marked: a duplicate hand-out must not count twice.
            fresh = [event for event in batch if event.position in marked]
            if fresh:
                for consumer in self._transactional:
                    await consumer.handle(session, fresh)
