"""The outbox's cheap paths keep the guarantees: one statement advances every stream of a
transaction, pokes wake the leader without a poll, standbys ignore pokes, and rows handed out
while their mark is pending are not handed out again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

import tidings.events.dispatcher as dispatcher_module
import tidings.events.store as event_store
import tidings.runtime as runtime_module
from tests.support.helpers import CollectingConsumer, eventually
from tidings.events.dispatcher import DispatchedEvent, OutboxDispatcher
from tidings.events.models import Event, EventStream
from tidings.events.service import NewEvent, emit, emit_many
from tidings.runtime import Runtime
from tidings.settings import Settings


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime(settings, role="serve")
    await rt.start()
    yield rt
    await rt.stop()


async def test_emit_many_advances_a_thousand_streams_with_one_statement(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ten streams already have three events each.
    async with runtime.db.transaction() as session:
        await emit_many(
            session, [NewEvent("x.y", f"s:{n:04d}", {}) for n in range(10) for _ in range(3)]
        )
    statements: list[str] = []

    class Recording:
        """The driver's connection, noting each statement (the events are written at the
        driver: SQLAlchemy's execute hooks never see them)."""

        def __init__(self, conn: Any) -> None:
            self._conn = conn

        def __getattr__(self, name: str) -> Any:
            method = getattr(self._conn, name)
            if name not in ("execute", "fetch", "execute_fetchall"):
                return method

            def recorded(statement: str, *args: Any) -> Any:
                statements.append(statement)
                return method(statement, *args)

            return recorded

    real_driver_of = event_store.driver_of

    async def recording_driver_of(session: AsyncSession) -> Any:
        return Recording(await real_driver_of(session))

    # 1,000 streams in one transaction (as a send batch writes), given unsorted, two events on
    # every tenth stream.
    streams = [f"s:{n:04d}" for n in reversed(range(1000))]
    batch = [NewEvent("x.y", s, {"i": i}) for i, s in enumerate(streams)]
    batch += [NewEvent("x.y", s, {"again": True}) for s in streams[::10]]
    monkeypatch.setattr(event_store, "driver_of", recording_driver_of)
    async with runtime.db.transaction() as session:
        written = await emit_many(session, batch)
    monkeypatch.undo()

    assert sum("event_streams" in s for s in statements) == 1
    expected: dict[str, list[int]] = {}
    for new_event, row in zip(batch, written, strict=True):
        assert row.stream_key == new_event.stream_key
        expected.setdefault(row.stream_key, []).append(row.stream_seq)
    for n in range(1000):
        first = 4 if n < 10 else 1
        count = 2 if (999 - n) % 10 == 0 else 1
        assert expected[f"s:{n:04d}"] == list(range(first, first + count))
    async with runtime.db.read() as session:
        last = dict(
            (await session.execute(select(EventStream.stream_key, EventStream.last_seq))).all()
        )
        stored = await session.scalar(select(func.count()).select_from(Event))
    assert last["s:0000"] == 4
    assert last["s:0999"] == 2
    assert last["s:0998"] == 1
    assert stored == 30 + len(batch)


async def test_a_poke_wakes_the_leader_without_waiting_for_the_poll(runtime: Runtime) -> None:
    await runtime.dispatcher.stop()
    dispatcher = OutboxDispatcher(runtime.db, node_id="slow-poller", poll_interval=60.0)
    collector = CollectingConsumer()
    dispatcher.add_live(collector)
    runtime.db.hooks.events_committed = dispatcher.poke
    runtime.db.hooks.events_stored = None  # the wake-up, not the hand-over (see test_outbox)
    dispatcher.start()
    try:
        await eventually(lambda: _is_leader(dispatcher))
        started = time.monotonic()
        for index in range(20):
            async with runtime.db.transaction() as session:
                await emit(session, "a.b", stream_key="s:poke", payload={"i": index})
            await eventually(lambda n=index + 1: _has(collector, n), within=5)
        # Twenty round trips, each far shorter than one poll interval.
        assert time.monotonic() - started < 30
        assert [e.payload["i"] for e in collector.unique()] == list(range(20))
    finally:
        await dispatcher.stop()


async def test_a_standby_takes_no_lease_transaction_per_poke(
    runtime: Runtime, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    await eventually(lambda: _is_leader(runtime.dispatcher))
    attempts = 0
    acquire = dispatcher_module.acquire_lease

    async def counting(db: Any, name: str, holder: str, ttl: float) -> bool:
        nonlocal attempts
        attempts += holder == "standby"  # not the leader's renewals
        return await acquire(db, name, holder, ttl)

    monkeypatch.setattr(dispatcher_module, "acquire_lease", counting)
    standby = OutboxDispatcher(
        runtime.db, node_id="standby", lease_seconds=settings.outbox_lease_seconds
    )
    started = time.monotonic()
    standby.start()
    try:
        for _ in range(100):  # as many commits as an API process would see
            standby.poke()
            await asyncio.sleep(0.002)
        assert not standby.is_leader
        # One attempt at start, then one every third of the lease, however many pokes.
        retries = (time.monotonic() - started) // (settings.outbox_lease_seconds / 3)
        assert attempts <= 1 + retries
    finally:
        await standby.stop()


class SlowMarks:
    """A transactional consumer that holds every mark's transaction open for a while."""

    name = "slow-marks"

    def __init__(self) -> None:
        self.seen = 0

    async def handle(self, session: AsyncSession, events: Sequence[DispatchedEvent]) -> None:
        self.seen += len(events)
        await asyncio.sleep(0.15)


async def test_events_awaiting_their_mark_are_not_handed_out_again(runtime: Runtime) -> None:
    collector = CollectingConsumer()
    slow = SlowMarks()
    runtime.dispatcher.add_live(collector)
    runtime.dispatcher.add_transactional(slow)
    for round_ in range(6):
        async with runtime.db.transaction() as session:
            await emit_many(
                session,
                [NewEvent("a.b", f"s:pending-{i % 3}", {"r": round_, "i": i}) for i in range(10)],
            )
        await asyncio.sleep(0.03)  # new reads while earlier marks are still open
    await eventually(lambda: _has(collector, 60), within=15)

    async def all_marked() -> bool:
        async with runtime.db.read() as session:
            pending = await session.scalar(
                select(func.count()).select_from(Event).where(Event.dispatched_at.is_(None))
            )
        return pending == 0

    await eventually(all_marked, within=15)
    assert len(collector.received) == 60  # each once: no re-read of rows awaiting their mark
    assert slow.seen == 60
    for stream in range(3):
        seqs = [e.stream_seq for e in collector.received if e.stream_key == f"s:pending-{stream}"]
        assert seqs == sorted(seqs)


async def _is_leader(dispatcher: OutboxDispatcher) -> bool:
    return dispatcher.is_leader


async def _has(collector: CollectingConsumer, count: int) -> bool:
    return len(collector.unique()) >= count


@pytest.mark.profiles("scaled")
async def test_only_a_process_that_does_not_lead_pokes_the_cluster(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polls far apart: what reaches the leader quickly came through a poke.
    slow = settings.model_copy(update={"outbox_poll_interval_seconds": 60.0})
    leader, other = Runtime(slow, role="serve"), Runtime(slow, role="serve")
    await leader.start()
    await eventually(lambda: _is_leader(leader.dispatcher))
    await other.start()
    published: dict[str, int] = {"leader": 0, "other": 0}
    for name, runtime in (("leader", leader), ("other", other)):
        publish = runtime.backplane.publish

        async def counting(channel: str, data: bytes, _p: Any = publish, _n: str = name) -> None:
            published[_n] += channel == runtime_module.OUTBOX_POKE_CHANNEL
            await _p(channel, data)

        monkeypatch.setattr(runtime.backplane, "publish", counting)
    collector = CollectingConsumer()
    leader.dispatcher.add_live(collector)
    try:
        assert not other.dispatcher.is_leader
        for index in range(5):
            async with leader.db.transaction() as session:
                await emit(session, "from.leader", stream_key="s:lead", payload={"i": index})
            await eventually(lambda n=index + 1: _has(collector, n), within=5)
        assert published["leader"] == 0
        async with other.db.transaction() as session:
            await emit(session, "from.other", stream_key="s:lead", payload={})
        await eventually(lambda: _has(collector, 6), within=5)
        assert published["other"] == 1
    finally:
        await other.stop()
        await leader.stop()
