"""The outbox dispatcher: hands committed events, in order per stream, to consumers.

One dispatcher per cluster is active (it holds the `outbox-dispatcher` lease); every other
process keeps a standby that tries to take the lease every third of its lifetime (pokes do not
wake a standby: they would cost it a lease transaction per commit). For each batch of
undispatched events, oldest first:

1. live consumers (backplane, event stream, in-process callbacks) get the batch; they may see it
   again after a crash, so they dedupe by event id;
2. transactional consumers write what they derive (audit rows, jobs) in the same transaction
   that marks the batch dispatched, so for them each event counts exactly once.

A crash anywhere before step 2 commits leaves the rows undispatched; the next leader sends them.

Cost per batch, not per event: the read is one statement written per dialect and run on the
driver's connection (no ORM, no SQLAlchemy result processing); rows already handed out but not
yet marked are excluded by the database, not re-read and dropped; the mark is one `UPDATE … WHERE
position = ANY(array)` whatever the batch size. Marks run in their own task, so the next read
does not wait for the mark's COMMIT (or for SQLite's write lock).
"""

# ruff: noqa: S608 - the statements are composed of constants only; every value is bound.

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

import orjson
from sqlalchemy import bindparam, text
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db import sqlite_values as sv
from tidings.db.base import UTCDateTime, utcnow
from tidings.db.database import Database
from tidings.db.leases import acquire_lease, release_lease
from tidings.infra import metrics
from tidings.infra.logging import get_logger

LEASE_NAME = "outbox-dispatcher"
# Events handed out and not marked yet, in batches: past it, hand-outs wait for the marker
# (and as many again may wait for a gap, `take`). Memory stays bounded. Ten batches were too
# few for a burst of send batches: the hand-outs spent their time waiting on the marks.
MAX_INFLIGHT_BATCHES = 20
# The marker waits this long after a batch before it marks, so that at moderate rates one mark
# transaction covers the batches of several commits (the live consumers already have them: this
# delays only the transactional consumers and the "dispatched" column, never live delivery).
MARK_GATHER_SECONDS = 0.01
_log = get_logger(__name__)

# -- statements ------------------------------------------------------------------------------
# Columns in the order of DispatchedEvent's fields.
_COLUMNS = "id, position, type, workspace_id, stream_key, stream_seq, payload, occurred_at"
# Undispatched rows, oldest first, minus those handed out whose mark has not committed yet
# (`NOT IN (subquery)`: a hashed anti-join on PostgreSQL, an ephemeral index on SQLite).
_PG_READ = f"SELECT {_COLUMNS} FROM events WHERE dispatched_at IS NULL ORDER BY position LIMIT $1"
_PG_READ_EXCEPT = (
    f"SELECT {_COLUMNS} FROM events WHERE dispatched_at IS NULL "
    "AND position NOT IN (SELECT unnest($2::bigint[])) ORDER BY position LIMIT $1"
)
_PG_MARK = text(
    "UPDATE events SET dispatched_at = :now "
    "WHERE position = ANY(CAST(:positions AS BIGINT[])) AND dispatched_at IS NULL "
    "RETURNING position"
).bindparams(bindparam("now", type_=UTCDateTime()))
# The mark of a batch no transactional consumer wants: one statement, in autocommit.
_PG_MARK_AT_DRIVER = (
    "UPDATE events SET dispatched_at = $1 WHERE position = ANY($2::bigint[]) "
    "AND dispatched_at IS NULL"
)
_SQLITE_MARK_AT_DRIVER = (
    "UPDATE events SET dispatched_at = ? "
    "WHERE position IN (SELECT value FROM json_each(?)) AND dispatched_at IS NULL"
)
# Below a position: a read stops short of the commits waiting for it (`take`).
_SQLITE_READ = (
    f"SELECT {_COLUMNS} FROM events WHERE dispatched_at IS NULL AND position < ? "
    "ORDER BY position LIMIT ?"
)
_SQLITE_READ_EXCEPT = (
    f"SELECT {_COLUMNS} FROM events WHERE dispatched_at IS NULL AND position < ? "
    "AND position NOT IN (SELECT value FROM json_each(?)) ORDER BY position LIMIT ?"
)
_NO_POSITION_LIMIT = 2**63 - 1
_SQLITE_MARK = text(
    "UPDATE events SET dispatched_at = :now "
    "WHERE position IN (SELECT value FROM json_each(:positions)) AND dispatched_at IS NULL "
    "RETURNING position"
).bindparams(bindparam("now", type_=UTCDateTime()))


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


_FIELDS = tuple(DispatchedEvent.__dataclass_fields__)
_new_event = object.__new__


def _event(values: Sequence[Any]) -> DispatchedEvent:
    # The frozen dataclass's __init__ sets each field through object.__setattr__; filling the
    # instance dict at once is about 3x cheaper, and this runs once per dispatched event.
    event: DispatchedEvent = _new_event(DispatchedEvent)
    event.__dict__.update(zip(_FIELDS, values, strict=True))
    return event


def _sqlite_event(row: Sequence[Any]) -> DispatchedEvent:
    # As SQLAlchemy stores them on SQLite: UUIDs as 32 hex digits, JSON as text, datetimes as
    # naive UTC text.
    event_id, position, type_, workspace_id, stream_key, seq, payload, occurred_at = row
    return _event(
        (
            uuid.UUID(hex=event_id),
            position,
            type_,
            uuid.UUID(hex=workspace_id) if workspace_id is not None else None,
            stream_key,
            seq,
            orjson.loads(payload),
            datetime.fromisoformat(occurred_at).replace(tzinfo=UTC),
        )
    )


def _first_position(rows: Sequence[Sequence[Any]]) -> int:
    position: int = rows[0][1]
    return position


def _stored_event(values: Sequence[Any]) -> DispatchedEvent:
    # What `emit_many` kept for `take`: the values written (ids and time as objects: the
    # read's parse of them cost ~3.5 µs an event), the payload as its JSON text, parsed here
    # so consumers get the plain JSON values a read gives.
    *head, payload, occurred_at = values
    return _event((*head, orjson.loads(payload), occurred_at))


class LiveConsumer(Protocol):
    """Receives each batch at least once, before it is marked dispatched."""

    name: str

    async def handle(self, events: Sequence[DispatchedEvent]) -> None: ...


class TransactionalConsumer(Protocol):
    """Writes its effects in the transaction that marks the batch dispatched (exactly once).

    A consumer may also define `wants(event) -> bool`, true for every event its `handle` would
    act on. A batch none of the consumers wants is marked with one statement at the driver,
    without a session (most batches: messages, deliveries); without `wants`, a consumer gets
    every batch.
    """

    name: str

    async def handle(self, session: AsyncSession, events: Sequence[DispatchedEvent]) -> None: ...


def _wanted_by(consumer: TransactionalConsumer, batch: Sequence[DispatchedEvent]) -> bool:
    wants = getattr(consumer, "wants", None)
    return wants is None or any(wants(event) for event in batch)


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
        self._max_inflight = MAX_INFLIGHT_BATCHES * batch_size
        self._poll_interval = poll_interval
        self._lease_seconds = lease_seconds
        self._live: list[LiveConsumer] = []
        self._transactional: list[TransactionalConsumer] = []
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # When to take or renew the lease next (loop time).
        self._lease_due = 0.0
        self.is_leader = False
        # Batches handed to live consumers whose "dispatched" mark is not committed yet.
        self._inflight: set[int] = set()
        # Marked and committed; leaves `_inflight` only before the next read begins, so a read
        # that started before the mark committed can never hand those events out again.
        self._marked: list[int] = []
        self._marks: asyncio.Queue[list[DispatchedEvent]] = asyncio.Queue()
        self._marker: asyncio.Task[None] | None = None
        # Reads and `take` hand batches out one at a time, in position order.
        self._handing = asyncio.Lock()
        # SQLite: the position the next committed event gets when every committed event before
        # it has been handed out (None: unknown until the first hand-out).
        self._next_position: int | None = None
        # SQLite: commits `take` could not hand out yet because a gap comes before them (a
        # refused hand-out not read yet, another process's events), in position order. Reads
        # stop short of the first; once a read fills the gap they go out as taken. Without
        # them, one refusal during a burst turned every later commit into a read, and the
        # reads, starved by the burst, fell further behind.
        self._waiting: list[Sequence[Sequence[Any]]] = []
        self._waiting_events = 0

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
                if loop.time() >= self._lease_due:
                    await self._renew_leadership(loop.time())
                if not self.is_leader:
                    # A standby ignores pokes: each would cost it a lease transaction.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._stopping.wait(), timeout=self._lease_due - loop.time()
                        )
                    continue
                dispatched = await self.dispatch_once()
                failures = 0
                if dispatched < self._batch_size:
                    # `dispatch_once` cleared the wake-up before it read: a commit poked since
                    # then (possibly unseen by that read) ends this wait at once.
                    await self._wait(min(self._poll_interval, self._lease_due - loop.time()))
            except Exception:
                failures += 1
                _log.exception("outbox_dispatch_failed", failures=failures)
                self._wakeup.clear()
                await self._wait(min(0.05 * 2**failures, 5.0))

    async def _renew_leadership(self, now: float) -> None:
        was_leader = self.is_leader
        try:
            self.is_leader = await acquire_lease(
                self._db, LEASE_NAME, self._node_id, self._lease_seconds
            )
        finally:
            # Renew well before expiry so a healthy leader never loses the lease to a standby;
            # a standby tries again as often.
            self._lease_due = now + self._lease_seconds / 3
        if not self.is_leader:
            self._drop_waiting()
        if self.is_leader != was_leader:
            _log.info("outbox_leadership_changed", leader=self.is_leader, node=self._node_id)

    async def _wait(self, seconds: float) -> None:
        if self._stopping.is_set() or seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)

    async def dispatch_once(self) -> int:
        """Hand one batch to the live consumers, and the commits waiting behind it (`take`);
        return how many events went out.

        Marking the batch dispatched (with the transactional consumers) happens in a separate
        task, so the next batch does not wait for the mark's COMMIT.
        """
        # Let the tasks that are ready run first: commits that finished at the same moment poke
        # now, and this read takes them all.
        await asyncio.sleep(0)
        self._wakeup.clear()
        if len(self._inflight) >= self._max_inflight:
            await self._marks.join()  # back-pressure: the marker is behind
        async with self._handing:
            self._forget_marked()
            batch = await self._read()
            if batch:
                # The read took the lowest positions not handed out, so every position up to
                # its last is handed out now, whether or not more are waiting (a full read): a
                # commit that starts right after it is next in order (one writer at a time).
                # Forgetting the position after a full read left every later commit to a read
                # while sends of exactly `batch_size` kept coming.
                self._next_position = batch[-1].position + 1
                await self._hand_out(batch)
            if self._waiting and len(batch) < self._batch_size:
                # Nothing is left below the first waiting commit: it committed, so every lower
                # position did (and was read) or was rolled back.
                self._next_position = _first_position(self._waiting[0])
            handed = await self._hand_out_waiting()
            if not batch and not handed:
                if not self._inflight:
                    metrics.OUTBOX_LAG.set(0)
                return 0
        return len(batch) + handed

    async def take(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Hand out the events of a transaction this process has just committed on SQLite, from
        what it wrote (`rows`: `emit_many`'s `stored`, by position), without reading them
        back: the commit-to-subscriber path loses a read and a wake-up.

        True when they are handed out, here or by a read before; False when a read must come
        first (a gap before them: another writer's events, a refused hand-out not read yet),
        and then the caller wakes the dispatcher: the rows wait (`_waiting`) and go out right
        after the read that fills the gap. Only on SQLite, whose one writer at a time gives
        positions in commit order; on PostgreSQL a lower position may still commit later.
        """
        if not rows or not self.is_leader or self._stopping.is_set() or not self._db.is_sqlite:
            return False
        async with self._handing:
            first, last = rows[0][1], rows[-1][1]
            if last - first + 1 != len(rows) or (
                self._next_position is not None and first < self._next_position
            ):
                return all(row[1] in self._inflight for row in rows)
            if first != self._next_position:
                if self._waiting_events + len(rows) <= self._max_inflight:
                    bisect.insort(self._waiting, rows, key=_first_position)
                    self._waiting_events += len(rows)
                return False
            if len(self._inflight) >= self._max_inflight:
                return False  # the marker is behind: the dispatcher waits for it, not the writer
            self._forget_marked()
            if not await self._hand_out_taken(rows):
                return False
            await self._hand_out_waiting()
        return True

    async def _hand_out_taken(self, rows: Sequence[Sequence[Any]]) -> bool:
        try:
            await self._hand_out([_stored_event(values) for values in rows])
        except Exception:
            _log.exception("outbox_take_failed", events=len(rows))
            self._next_position = None
            self._drop_waiting()  # a read hands everything out again, in order
            return False
        self._next_position = rows[-1][1] + 1
        return True

    async def _hand_out_waiting(self) -> int:
        """The waiting commits that are next in order, as `take` hands out (the lock held)."""
        handed = 0
        while self._waiting and _first_position(self._waiting[0]) == self._next_position:
            if len(self._inflight) >= self._max_inflight:
                break  # the marker is behind: the dispatcher waits for it, then goes on
            rows = self._waiting.pop(0)
            self._waiting_events -= len(rows)
            if not await self._hand_out_taken(rows):
                break
            handed += len(rows)
        return handed

    def _drop_waiting(self) -> None:
        # Their events are in the outbox: a read (this leader's, or the next one's) has them.
        self._waiting.clear()
        self._waiting_events = 0

    def _forget_marked(self) -> None:
        # Only between hand-outs (the lock held): a read that began before a mark committed
        # must still see those positions as in flight.
        if self._marked:
            self._inflight.difference_update(self._marked)
            self._marked.clear()

    async def _hand_out(self, batch: list[DispatchedEvent]) -> None:
        now = time.time()
        metrics.OUTBOX_LAG.set(max(0.0, now - batch[0].occurred_at.timestamp()))
        for consumer in self._live:
            await consumer.handle(batch)
        now = time.time()
        observe = metrics.OUTBOX_DISPATCH_LATENCY.observe
        for event in batch:
            observe(now - event.occurred_at.timestamp())
        metrics.OUTBOX_DISPATCHED.inc(len(batch))
        self._inflight.update([event.position for event in batch])
        self._marks.put_nowait(batch)

    async def _read(self) -> list[DispatchedEvent]:
        inflight = self._inflight
        if self._db.dialect == "postgresql":
            async with self._db.driver_connection() as conn:
                if inflight:
                    rows = await conn.fetch(_PG_READ_EXCEPT, self._batch_size, list(inflight))
                else:
                    rows = await conn.fetch(_PG_READ, self._batch_size)
            return [_event(row) for row in rows]
        # SQLite: a reader connection, outside the write lock (WAL readers never block).
        before = _first_position(self._waiting[0]) if self._waiting else _NO_POSITION_LIMIT
        async with self._db.read_engine.connect() as connection:
            driver: Any = (await connection.get_raw_connection()).driver_connection
            if inflight:
                params: tuple[Any, ...] = (before, json.dumps(list(inflight)), self._batch_size)
                rows = await driver.execute_fetchall(_SQLITE_READ_EXCEPT, params)
            else:
                rows = await driver.execute_fetchall(_SQLITE_READ, (before, self._batch_size))
        return [_sqlite_event(row) for row in rows]

    async def _mark_loop(self) -> None:
        while True:
            batch = await self._marks.get()
            if not self._stopping.is_set() and len(self._inflight) < self._batch_size:
                # Gather a few commits' batches into one mark at moderate rates; with a batch
                # or more waiting there is company enough, and hand-outs wait on the marks.
                await asyncio.sleep(MARK_GATHER_SECONDS)
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
            self._marked.extend([event.position for event in batch])
            for _ in range(taken):
                self._marks.task_done()

    async def _mark(self, batch: list[DispatchedEvent]) -> None:
        positions = [event.position for event in batch]
        consumers = [c for c in self._transactional if _wanted_by(c, batch)]
        if not consumers:
            async with self._db.driver_connection() as conn:
                if self._db.dialect == "postgresql":
                    await conn.execute(_PG_MARK_AT_DRIVER, utcnow(), positions)
                else:
                    await conn.execute_fetchall(
                        _SQLITE_MARK_AT_DRIVER, (sv.to_time(utcnow()), json.dumps(positions))
                    )
            return
        async with self._db.transaction() as session:
            listed: list[int] | str
            if self._db.dialect == "postgresql":
                statement, listed = _PG_MARK, positions
            else:
                statement, listed = _SQLITE_MARK, json.dumps(positions)
            result = await session.execute(statement, {"now": utcnow(), "positions": listed})
            marked = set(result.scalars())
            # Only events this transaction marked: a duplicate hand-out must not count twice.
            fresh = (
                batch if len(marked) == len(batch) else [e for e in batch if e.position in marked]
            )
            if fresh:
                for consumer in consumers:
                    await consumer.handle(session, fresh)
