"""`emit_many` for transactions on the driver's connection (`Database.driver_transaction`).

The same rows as `events.service.emit_many` writes through SQLAlchemy — the streams advanced
by one upsert, the events inserted by one statement — written per dialect, for the hot paths
that run whole transactions at the driver (the delivery log). The caller wakes the dispatcher
after its COMMIT (`Database.hooks.events_committed`).
"""

# ruff: noqa: S608 - the statements are composed of constants only; every value is bound.

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db import sqlite_values as sv
from tidings.db.base import utcnow
from tidings.db.database import after_commit, driver_of, hooks_of
from tidings.events.service import (
    PG_ADVANCE_SQL,
    SQLITE_ADVANCE_SQL,
    NewEvent,
    WrittenEvent,
    sequenced,
    stream_counts,
)

_COLUMN_NAMES = ("id", "type", "workspace_id", "stream_key", "stream_seq", "payload", "occurred_at")
_COLUMNS = ", ".join(_COLUMN_NAMES)
_PG_ADVANCE = PG_ADVANCE_SQL.format(keys="$1", counts="$2")
_PG_INSERT = (
    f"INSERT INTO events ({_COLUMNS}) SELECT * FROM unnest($1::uuid[], $2::varchar[], "
    "$3::uuid[], $4::varchar[], $5::bigint[], $6::jsonb[], $7::timestamptz[])"
)
_SQLITE_ADVANCE = SQLITE_ADVANCE_SQL.format(streams="?")


async def emit_many(conn: Any, dialect: str, new_events: Sequence[NewEvent]) -> list[WrittenEvent]:
    """Write `new_events` in the transaction open on `conn` (asyncpg or aiosqlite)."""
    counts = stream_counts(new_events)
    if not counts:
        return []
    ordered = sorted(counts)  # streams are locked in this order: no deadlock between writers
    if dialect == "postgresql":
        rows = await conn.fetch(_PG_ADVANCE, ordered, [counts[key] for key in ordered])
        events = sequenced(new_events, counts, {row[0]: row[1] for row in rows}, utcnow())
        await conn.execute(
            _PG_INSERT,
            [e.id for e in events],
            [e.type for e in events],
            [e.workspace_id for e in events],
            [e.stream_key for e in events],
            [e.stream_seq for e in events],
            [sv.json_text(e.payload) for e in events],
            [e.occurred_at for e in events],
        )
        return events
    streams = sv.json_text({key: counts[key] for key in ordered})
    rows = await conn.execute_fetchall(_SQLITE_ADVANCE, (streams,))
    events = sequenced(new_events, counts, {key: int(seq) for key, seq in rows}, utcnow())
    await sv.insert_rows(
        conn,
        "events",
        _COLUMN_NAMES,
        [
            (
                e.id.hex,
                e.type,
                sv.to_uuid(e.workspace_id),
                e.stream_key,
                e.stream_seq,
                sv.json_text(e.payload),
                sv.to_time(e.occurred_at),
            )
            for e in events
        ],
    )
    return events


async def emit_many_in(session: AsyncSession, new_events: Sequence[NewEvent]) -> list[WrittenEvent]:
    """`emit_many` at the driver, inside the session's transaction (same connection): for hot
    paths that keep SQLAlchemy's transaction but not its statement overhead."""
    if not new_events:
        return []
    conn = await driver_of(session)
    events = await emit_many(conn, session.get_bind().dialect.name, new_events)
    wake = hooks_of(session).events_committed
    if wake is not None:
        after_commit(session, wake, key="events_committed")
    return events
