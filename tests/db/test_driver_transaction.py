"""`Database.driver_transaction`: several statements at the driver, all or nothing."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tidings.db.database import Database
from tidings.events import store as event_store
from tidings.events.models import Event, EventStream
from tidings.events.service import NewEvent


class _InjectedError(Exception):
    pass


async def _counts(db: Database) -> tuple[int, int]:
    async with db.read() as session:
        events = await session.scalar(select(func.count()).select_from(Event))
        streams = await session.scalar(select(func.count()).select_from(EventStream))
    return int(events or 0), int(streams or 0)


async def test_a_failed_transaction_writes_nothing_and_its_connection_is_reused_clean(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        with pytest.raises(_InjectedError):
            async with db.driver_transaction() as conn:
                await event_store.emit_many(conn, db.dialect, [NewEvent("t.one", "s:1", {})])
                raise _InjectedError
        assert await _counts(db) == (0, 0)

        async with db.driver_transaction() as conn:
            written = await event_store.emit_many(
                conn,
                db.dialect,
                [NewEvent("t.one", "s:1", {"n": 1}), NewEvent("t.two", "s:1", {"n": 2})],
            )
        assert [e.stream_seq for e in written] == [1, 2]
        assert await _counts(db) == (2, 1)
        # What the driver wrote reads back through the ORM as the ORM would have written it.
        async with db.read() as session:
            rows = (await session.scalars(select(Event).order_by(Event.stream_seq))).all()
        assert [(r.type, r.payload, r.stream_seq) for r in rows] == [
            ("t.one", {"n": 1}, 1),
            ("t.two", {"n": 2}, 2),
        ]
        assert {r.id for r in rows} == {e.id for e in written}
        assert rows[0].occurred_at == written[0].occurred_at
    finally:
        await db.dispose()


async def test_statements_at_the_driver_share_the_session_transaction(database_url: str) -> None:
    """`driver_of` before any SQLAlchemy statement: still inside the session's transaction."""
    db = Database(database_url)
    try:
        with pytest.raises(_InjectedError):
            async with db.transaction() as session:
                await event_store.emit_many_in(session, [NewEvent("t.one", "s:1", {})])
                raise _InjectedError
        assert await _counts(db) == (0, 0)
        async with db.transaction() as session:
            await event_store.emit_many_in(session, [NewEvent("t.one", "s:1", {})])
        assert await _counts(db) == (1, 1)
    finally:
        await db.dispose()


async def test_more_rows_than_one_sqlite_statement_binds_are_all_written(
    database_url: str,
) -> None:
    """7 columns times 5,000 events is past SQLite's 32,766 bound variables: several INSERTs."""
    db = Database(database_url)
    try:
        async with db.driver_transaction() as conn:
            written = await event_store.emit_many(
                conn, db.dialect, [NewEvent("t.bulk", f"s:{i % 3}", {"i": i}) for i in range(5000)]
            )
        assert len(written) == 5000
        assert await _counts(db) == (5000, 3)
        async with db.read() as session:
            last = await session.scalar(select(func.max(Event.stream_seq)))
        assert last == 1667  # 5,000 events over three streams: 1,667 + 1,667 + 1,666
    finally:
        await db.dispose()


async def test_events_of_interleaved_streams_are_numbered_per_stream_in_their_order(
    database_url: str,
) -> None:
    """One emit of events on several streams, interleaved: each stream's sequences follow on
    from its last, in the order given, and positions follow that order too."""
    db = Database(database_url)
    try:
        streams = ["s:a", "s:b", "s:a", "s:c", "s:b", "s:a"]
        written = []
        for round_ in range(2):
            async with db.driver_transaction() as conn:
                written += await event_store.emit_many(
                    conn,
                    db.dialect,
                    [
                        NewEvent("t", key, {"round": round_, "i": i})
                        for i, key in enumerate(streams)
                    ],
                )
        assert [(e.stream_key, e.stream_seq) for e in written] == [
            ("s:a", 1), ("s:b", 1), ("s:a", 2), ("s:c", 1), ("s:b", 2), ("s:a", 3),
            ("s:a", 4), ("s:b", 3), ("s:a", 5), ("s:c", 2), ("s:b", 4), ("s:a", 6),
        ]  # fmt: skip
        async with db.read() as session:
            rows = (await session.scalars(select(Event).order_by(Event.position))).all()
        assert [(r.id, r.stream_key, r.stream_seq, r.payload["i"]) for r in rows] == [
            (e.id, e.stream_key, e.stream_seq, i % len(streams)) for i, e in enumerate(written)
        ]
    finally:
        await db.dispose()
