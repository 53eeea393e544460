"""The event outbox: events commit with their state, dispatch in order, and survive failures."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Sequence
from datetime import timedelta

import orjson
import pytest
import redis.asyncio as aioredis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from tests.conftest import REDIS_URL
from tests.support.helpers import CollectingConsumer, eventually
from tidings.events.dispatcher import DispatchedEvent, OutboxDispatcher
from tidings.events.models import Event, EventStream, ProcessedEvent
from tidings.events.service import NewEvent, emit, emit_many
from tidings.runtime import Runtime
from tidings.settings import Settings


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime(settings, role="serve")
    await rt.start()
    yield rt
    await rt.stop()


async def _count(rt: Runtime, model: type[Event] | type[EventStream]) -> int:
    async with rt.db.read() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_committed_events_are_dispatched_in_order(runtime: Runtime) -> None:
    collector = CollectingConsumer()
    runtime.dispatcher.add_live(collector)
    workspace = uuid.uuid4()
    for index in range(5):
        async with runtime.db.transaction() as session:
            await emit(
                session,
                "message.created",
                stream_key="conversation:1",
                payload={"index": index},
                workspace_id=workspace,
            )
    await eventually(lambda: _ready(collector, 5))
    assert [e.payload["index"] for e in collector.received] == [0, 1, 2, 3, 4]
    assert [e.stream_seq for e in collector.received] == [1, 2, 3, 4, 5]
    assert {e.workspace_id for e in collector.received} == {workspace}
    decoded = orjson.loads(collector.received[0].json)
    assert decoded["type"] == "message.created"
    assert decoded["seq"] == 1


async def _ready(collector: CollectingConsumer, count: int) -> bool:
    return len(collector.unique()) >= count


async def test_rolled_back_transaction_leaves_no_event(runtime: Runtime) -> None:
    collector = CollectingConsumer()
    runtime.dispatcher.add_live(collector)
    with pytest.raises(RuntimeError, match="business rule failed"):
        async with runtime.db.transaction() as session:
            await emit(session, "thing.created", stream_key="s:rollback", payload={})
            raise RuntimeError("business rule failed")
    assert await _count(runtime, Event) == 0
    assert await _count(runtime, EventStream) == 0
    # The next event on the stream gets sequence 1: the rolled-back one left no gap.
    async with runtime.db.transaction() as session:
        event = await emit(session, "thing.created", stream_key="s:rollback", payload={})
    assert event.stream_seq == 1
    await eventually(lambda: _ready(collector, 1))
    assert [e.type for e in collector.received] == ["thing.created"]


async def test_concurrent_writers_get_gap_free_sequences(runtime: Runtime) -> None:
    collector = CollectingConsumer()
    runtime.dispatcher.add_live(collector)
    streams = ["conversation:a", "conversation:b", "conversation:c"]

    async def writer(worker: int) -> None:
        for index in range(10):
            async with runtime.db.transaction() as session:
                await emit_many(
                    session,
                    [
                        NewEvent("message.created", stream, {"worker": worker, "i": index})
                        for stream in streams
                    ],
                )

    await asyncio.gather(*(writer(w) for w in range(12)))
    await eventually(lambda: _ready(collector, 360), within=30)
    by_stream: dict[str, list[int]] = defaultdict(list)
    for event in collector.unique():
        by_stream[event.stream_key].append(event.stream_seq)
    for stream in streams:
        # Delivered in sequence order, with every sequence from 1 to 120 exactly once.
        assert by_stream[stream] == list(range(1, 121))


async def test_failing_live_consumer_gets_the_batch_again(runtime: Runtime) -> None:
    flaky = CollectingConsumer("flaky", fail_times=2)
    runtime.dispatcher.add_live(flaky)
    async with runtime.db.transaction() as session:
        await emit(session, "a.b", stream_key="s:flaky", payload={"n": 1})
    await eventually(lambda: _ready(flaky, 1))
    assert flaky.batches >= 3

    async def dispatched() -> object:
        async with runtime.db.read() as session:
            return await session.scalar(select(Event.dispatched_at))

    await eventually(dispatched)


class LedgerConsumer:
    """A transactional consumer: its effect commits with the dispatch mark, once per event."""

    name = "ledger"

    async def handle(self, session: AsyncSession, events: Sequence[DispatchedEvent]) -> None:
        session.add_all(ProcessedEvent(consumer=self.name, event_id=e.id) for e in events)


async def test_transactional_consumer_sees_each_event_once(runtime: Runtime) -> None:
    runtime.dispatcher.add_transactional(LedgerConsumer())
    async with runtime.db.transaction() as session:
        await emit_many(session, [NewEvent("x.y", "s:ledger", {"i": i}) for i in range(50)])

    async def processed() -> int:
        async with runtime.db.read() as session:
            return int(await session.scalar(select(func.count()).select_from(ProcessedEvent)) or 0)

    assert await eventually(processed) == 50
    await asyncio.sleep(0.3)  # further polls must not process anything again
    assert await processed() == 50


class PickyLedger(LedgerConsumer):
    """A transactional consumer that says which events it acts on."""

    name = "picky"

    def __init__(self) -> None:
        self.batches = 0

    def wants(self, event: DispatchedEvent) -> bool:
        return event.type == "x.wanted"

    async def handle(self, session: AsyncSession, events: Sequence[DispatchedEvent]) -> None:
        self.batches += 1
        await super().handle(session, [e for e in events if self.wants(e)])


async def test_batches_no_transactional_consumer_wants_are_marked_without_them(
    runtime: Runtime,
) -> None:
    picky = PickyLedger()
    runtime.dispatcher.add_transactional(picky)
    async with runtime.db.transaction() as session:
        await emit_many(session, [NewEvent("x.other", "s:picky", {"i": i}) for i in range(20)])

    async def undispatched() -> int:
        async with runtime.db.read() as session:
            query = select(func.count()).select_from(Event).where(Event.dispatched_at.is_(None))
            return int(await session.scalar(query) or 0)

    async def processed() -> int:
        async with runtime.db.read() as session:
            return int(await session.scalar(select(func.count()).select_from(ProcessedEvent)) or 0)

    await eventually(lambda: _equals(undispatched(), 0))
    assert picky.batches == 0  # marked at the driver: the consumer was not asked
    async with runtime.db.transaction() as session:
        await emit(session, "x.wanted", stream_key="s:picky", payload={})
    assert await eventually(processed) == 1
    await eventually(lambda: _equals(undispatched(), 0))
    assert picky.batches >= 1


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_one_leader_dispatches_and_a_standby_takes_over(
    runtime: Runtime, settings: Settings
) -> None:
    await eventually(lambda: _is_leader(runtime.dispatcher))
    standby = OutboxDispatcher(
        runtime.db,
        node_id="standby",
        poll_interval=0.05,
        lease_seconds=settings.outbox_lease_seconds,
    )
    collector = CollectingConsumer()
    standby.add_live(collector)
    standby.start()
    try:
        await asyncio.sleep(0.3)
        assert not standby.is_leader
        await runtime.dispatcher.stop()  # releases the lease
        await eventually(lambda: _is_leader(standby))
        async with runtime.db.transaction() as session:
            await emit(session, "after.failover", stream_key="s:failover", payload={})
        await eventually(lambda: _ready(collector, 1))
    finally:
        await standby.stop()


async def _is_leader(dispatcher: OutboxDispatcher) -> bool:
    return dispatcher.is_leader


@pytest.mark.profiles("scaled")
async def test_scaled_events_are_appended_to_the_redis_stream(
    runtime: Runtime, settings: Settings
) -> None:
    async with runtime.db.transaction() as session:
        event = await emit(session, "audit.recorded", stream_key="s:redis", payload={"k": "v"})
    client = aioredis.from_url(REDIS_URL)
    try:

        async def entries() -> list[object]:
            return await client.xrange(f"{settings.redis_prefix}events")  # type: ignore[no-any-return]

        [(_, fields)] = await eventually(entries)
    finally:
        await client.aclose()
    assert fields[b"id"].decode() == str(event.id)
    assert orjson.loads(fields[b"data"])["payload"] == {"k": "v"}


# -- embedded: committed events handed to the dispatcher without reading them back -------------


class _CountingReads:
    def __init__(self, dispatcher: OutboxDispatcher, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        read = dispatcher._read

        async def counting() -> list[DispatchedEvent]:
            self.reads += 1
            return await read()

        monkeypatch.setattr(dispatcher, "_read", counting)


async def _drained(runtime: Runtime, collector: CollectingConsumer) -> None:
    """One event through a read, which tells the dispatcher where the outbox ends."""
    async with runtime.db.transaction() as session:
        await emit(session, "warm.up", stream_key="s:warm", payload={})
    await eventually(lambda: _ready(collector, 1))
    await eventually(lambda: _has_next_position(runtime.dispatcher))


async def _has_next_position(dispatcher: OutboxDispatcher) -> bool:
    return dispatcher._next_position is not None


async def _undispatched(runtime: Runtime) -> int:
    async with runtime.db.read() as session:
        query = select(func.count()).select_from(Event).where(Event.dispatched_at.is_(None))
        return int(await session.scalar(query) or 0)


@pytest.mark.profiles("embedded")
async def test_committed_events_are_handed_out_without_a_read(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = CollectingConsumer()
    runtime.dispatcher.add_live(collector)
    await eventually(lambda: _is_leader(runtime.dispatcher))
    await _drained(runtime, collector)
    counter = _CountingReads(runtime.dispatcher, monkeypatch)
    for index in range(20):
        async with runtime.db.transaction() as session:
            await emit_many(
                session,
                [
                    NewEvent("thing.made", "s:take", {"i": index, "id": uuid.uuid4()}),
                    NewEvent("thing.made", f"s:other:{index % 3}", {"i": index}),
                ],
            )
        # Handed out before the transaction's block returns: no poll, no wake-up.
        assert len(collector.unique()) == 1 + 2 * (index + 1)
    assert counter.reads == 0
    taken = collector.unique()[1:]
    assert [e.payload["i"] for e in taken if e.stream_key == "s:take"] == list(range(20))
    assert [e.stream_seq for e in taken if e.stream_key == "s:take"] == list(range(1, 21))
    positions = [e.position for e in taken]
    assert positions == sorted(positions)
    assert len(set(positions)) == 40
    # Exactly what a read of the outbox gives: the same types, the JSON as stored.
    async with runtime.db.read() as session:
        stored = {row.id: row for row in await session.scalars(select(Event))}
    for event in taken:
        row = stored[event.id]
        assert (event.position, event.stream_key, event.stream_seq) == (
            row.position,
            row.stream_key,
            row.stream_seq,
        )
        assert (event.type, event.workspace_id) == (row.type, row.workspace_id)
        assert event.payload == row.payload
        assert event.occurred_at == row.occurred_at
        assert event.occurred_at.utcoffset() == timedelta(0)
    assert isinstance(taken[0].payload["id"], str)
    assert {type(e.id) for e in taken} == {uuid.UUID}
    await eventually(lambda: _equals(_undispatched(runtime), 0))  # marked as usual


@pytest.mark.profiles("embedded")
async def test_events_of_a_rolled_back_savepoint_are_never_handed_out(
    runtime: Runtime,
) -> None:
    collector = CollectingConsumer()
    runtime.dispatcher.add_live(collector)
    await eventually(lambda: _is_leader(runtime.dispatcher))
    await _drained(runtime, collector)
    async with runtime.db.transaction() as session:
        await emit(session, "kept.before", stream_key="s:nested", payload={})
        with pytest.raises(RuntimeError):
            async with session.begin_nested():
                await emit(session, "rolled.back", stream_key="s:nested", payload={})
                raise RuntimeError("this send fails alone")
    async with runtime.db.transaction() as session:
        # Takes the position the rolled-back event had.
        await emit(session, "kept.after", stream_key="s:nested", payload={})
    await eventually(lambda: _ready(collector, 3))
    await asyncio.sleep(0.2)
    assert [e.type for e in collector.unique()[1:]] == ["kept.before", "kept.after"]
    assert [e.stream_seq for e in collector.unique()[1:]] == [1, 2]


@pytest.mark.profiles("embedded")
async def test_events_behind_another_writers_are_read_in_order(runtime: Runtime) -> None:
    """Events another process committed (here: a transaction that does not hand over) come
    before this process's next ones: the hand-over sees the gap and the read keeps the order."""
    collector = CollectingConsumer()
    runtime.dispatcher.add_live(collector)
    await eventually(lambda: _is_leader(runtime.dispatcher))
    await _drained(runtime, collector)
    take = runtime.db.hooks.events_stored
    runtime.db.hooks.events_stored = None
    runtime.db.hooks.events_committed = None  # another process: no wake-up here
    async with runtime.db.transaction() as session:
        await emit(session, "from.elsewhere", stream_key="s:gap", payload={})
    runtime.db.hooks.events_stored = take
    runtime.db.hooks.events_committed = runtime._on_events_committed
    async with runtime.db.transaction() as session:
        await emit(session, "from.here", stream_key="s:gap", payload={})
    await eventually(lambda: _ready(collector, 3), within=5)
    assert [e.type for e in collector.unique()[1:]] == ["from.elsewhere", "from.here"]


@pytest.mark.profiles("embedded")
async def test_commits_after_a_full_read_are_handed_out_without_one(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that comes back full (a send batch of exactly a read's size) still tells the
    dispatcher where the next commit starts: the commits after it are handed over, not read."""
    collector = CollectingConsumer()
    runtime.dispatcher.add_live(collector)
    await eventually(lambda: _is_leader(runtime.dispatcher))
    await _drained(runtime, collector)
    monkeypatch.setattr(runtime.dispatcher, "_batch_size", 2)
    counter = _CountingReads(runtime.dispatcher, monkeypatch)
    # Events of a savepoint are read back, never handed over.
    async with runtime.db.transaction() as session, session.begin_nested():
        await emit_many(session, [NewEvent("read.back", "s:full", {"i": i}) for i in range(2)])
    await eventually(lambda: _ready(collector, 3))
    reads = counter.reads
    assert reads >= 1
    for index in range(5):
        async with runtime.db.transaction() as session:
            await emit(session, "handed.over", stream_key="s:full", payload={"i": index})
        # Handed out before the transaction's block returns.
        assert len(collector.unique()) == 4 + index
    assert counter.reads == reads
    assert [e.stream_seq for e in collector.unique()[1:]] == list(range(1, 8))


@pytest.mark.profiles("embedded")
async def test_commits_behind_a_gap_wait_for_its_read_and_go_out_unread(
    runtime: Runtime,
) -> None:
    """Commits after a gap (here another process's events) wait, in order; the read stops short
    of them and fills the gap, and they go out as handed over: only the gap is read."""
    await runtime.dispatcher.stop()  # this test drives its own dispatcher, by hand
    dispatcher = OutboxDispatcher(runtime.db, node_id="by-hand")
    collector = CollectingConsumer()
    dispatcher.add_live(collector)
    dispatcher.is_leader = True  # no lease loop: `dispatch_once` runs only when called here
    read_rows: list[str] = []
    read = dispatcher._read

    async def recording() -> list[DispatchedEvent]:
        batch = await read()
        read_rows.extend(event.type for event in batch)
        return batch

    dispatcher._read = recording  # type: ignore[method-assign]
    refused: list[bool] = []

    async def take(rows: list[tuple[object, ...]]) -> None:
        refused.append(not await dispatcher.take(rows))

    runtime.db.hooks.events_committed = None
    runtime.db.hooks.events_stored = take
    async with runtime.db.transaction() as session:
        await emit(session, "warm.up", stream_key="s:wait", payload={})
    assert refused == [True]  # where the outbox ends is not known yet: it waits for a read
    assert await dispatcher.dispatch_once() == 1
    assert read_rows == []  # the read stopped short of it, and found nothing before it
    runtime.db.hooks.events_stored = None  # another process: no hand-over here
    async with runtime.db.transaction() as session:
        await emit(session, "from.elsewhere", stream_key="s:wait", payload={})
    runtime.db.hooks.events_stored = take
    for index in range(3):
        async with runtime.db.transaction() as session:
            await emit_many(
                session, [NewEvent("from.here", "s:wait", {"i": index}) for _ in range(2)]
            )
    assert refused == [True] * 4  # behind the gap: they wait
    assert len(collector.unique()) == 1
    assert await dispatcher.dispatch_once() == 7
    assert read_rows == ["from.elsewhere"]
    async with runtime.db.transaction() as session:
        await emit(session, "after.the.gap", stream_key="s:wait", payload={})
    assert refused[-1] is False  # handed over at once again
    assert [e.type for e in collector.unique()] == (
        ["warm.up", "from.elsewhere"] + ["from.here"] * 6 + ["after.the.gap"]
    )
    assert [e.stream_seq for e in collector.unique()] == list(range(1, 10))
    assert read_rows == ["from.elsewhere"]


@pytest.mark.profiles("embedded")
async def test_commits_past_the_waiting_bound_are_read_in_order(runtime: Runtime) -> None:
    """More commits behind a gap than may wait in memory: the first ones wait, the rest are
    left to reads, and every event still goes out once, in order."""
    await runtime.dispatcher.stop()  # this test drives its own dispatcher, by hand
    dispatcher = OutboxDispatcher(runtime.db, node_id="by-hand", batch_size=2)
    collector = CollectingConsumer()
    dispatcher.add_live(collector)
    dispatcher.is_leader = True  # no lease loop; only the marker runs on its own
    marker = asyncio.create_task(dispatcher._mark_loop())
    bound = 20 * 2  # MAX_INFLIGHT_BATCHES read sizes
    refused: list[bool] = []

    async def take(rows: list[tuple[object, ...]]) -> None:
        refused.append(not await dispatcher.take(rows))

    runtime.db.hooks.events_committed = None
    runtime.db.hooks.events_stored = None  # another process: the gap
    try:
        async with runtime.db.transaction() as session:
            await emit(session, "gap", stream_key="s:bound", payload={})
        runtime.db.hooks.events_stored = take
        for index in range(bound + 5):
            async with runtime.db.transaction() as session:
                await emit(session, "behind", stream_key="s:bound", payload={"i": index})
        assert refused == [True] * (bound + 5)
        assert dispatcher._waiting_events == bound
        for _ in range(200):
            if len(collector.unique()) == bound + 6:
                break
            await dispatcher.dispatch_once()
        events = collector.received
        assert events == collector.unique()  # none twice
        assert [e.type for e in events] == ["gap"] + ["behind"] * (bound + 5)
        assert [e.payload.get("i") for e in events[1:]] == list(range(bound + 5))
        assert [e.stream_seq for e in events] == list(range(1, bound + 7))
        assert dispatcher._waiting == []
    finally:
        marker.cancel()
        await asyncio.gather(marker, return_exceptions=True)
