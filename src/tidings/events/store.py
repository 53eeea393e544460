"""`emit_many` for transactions on the driver's connection (`Database.driver_transaction`).

The same rows as `events.service.emit_many` writes through SQLAlchemy — the streams advanced
by one upsert, the events inserted by one statement — written per dialect, for the hot paths
that run whole transactions at the driver (the delivery log). The caller wakes the dispatcher
after its COMMIT (`Database.hooks.events_committed`).
"""

# ruff: noqa: S608 - the statements are composed of constants only; every value is bound.

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db import sqlite_values as sv
from tidings.db.base import new_id, utcnow
from tidings.db.database import CommitHooks, after_commit, driver_of, hooks_of
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
# One statement, one round trip: the streams advanced (locked in the order of $1, sorted), then
# the events inserted in their order, the nth event of a stream in this transaction numbered
# last_seq - count + n. What `sequenced` does for SQLite, where a statement costs no trip.
_PG_EMIT = (
    f"WITH advanced AS ({PG_ADVANCE_SQL.format(keys='$1', counts='$2')}), "
    "incoming AS ("
    "SELECT e.*, row_number() OVER (PARTITION BY e.stream_key ORDER BY e.nth) AS rank, "
    "count(*) OVER (PARTITION BY e.stream_key) AS total "
    "FROM unnest($3::uuid[], $4::varchar[], $5::uuid[], $6::varchar[], $7::jsonb[]) "
    "WITH ORDINALITY AS e(id, type, workspace_id, stream_key, payload, nth)) "
    f"INSERT INTO events ({_COLUMNS}) "
    "SELECT i.id, i.type, i.workspace_id, i.stream_key, a.last_seq - i.total + i.rank, "
    "i.payload, $8::timestamptz "
    "FROM incoming i JOIN advanced a ON a.stream_key = i.stream_key ORDER BY i.nth "
    "RETURNING id, stream_seq"
)
_SQLITE_ADVANCE = SQLITE_ADVANCE_SQL.format(streams="?")
_WAKE_KEY = "events_committed"
_STORED_KEY = "tidings.events_stored"


async def emit_many(
    conn: Any,
    dialect: str,
    new_events: Sequence[NewEvent],
    *,
    stored: list[tuple[Any, ...]] | None = None,
) -> list[WrittenEvent]:
    """Write `new_events` in the transaction open on `conn` (asyncpg or aiosqlite).

    `stored` (SQLite): receives the events as written, with their positions, in the columns
    and order of the dispatcher's outbox read (`OutboxDispatcher.take`), as values rather
    than as stored text, except the payload, which is the JSON written."""
    counts = stream_counts(new_events)
    if not counts:
        return []
    ordered = sorted(counts)  # streams are locked in this order: no deadlock between writers
    if dialect == "postgresql":
        ids, now = [new_id() for _ in new_events], utcnow()
        rows = await conn.fetch(
            _PG_EMIT,
            ordered,
            [counts[key] for key in ordered],
            ids,
            [e.type for e in new_events],
            [e.workspace_id for e in new_events],
            [e.stream_key for e in new_events],
            [sv.json_text(e.payload) for e in new_events],
            now,
        )
        seqs: dict[uuid.UUID, int] = dict(rows)
        return [
            WrittenEvent(
                id=event_id,
                type=e.type,
                workspace_id=e.workspace_id,
                stream_key=e.stream_key,
                stream_seq=seqs[event_id],
                payload=e.payload,
                occurred_at=now,
            )
            for event_id, e in zip(ids, new_events, strict=True)
        ]
    streams = sv.json_text({key: counts[key] for key in ordered})
    rows = await conn.execute_fetchall(_SQLITE_ADVANCE, (streams,))
    events = sequenced(new_events, counts, {key: int(seq) for key, seq in rows}, utcnow())
    rows = [
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
    ]
    if stored is None:
        await sv.insert_rows(conn, "events", _COLUMN_NAMES, rows)
        return events
    # RETURNING's row order is unspecified: positions are matched by id.
    returned = await sv.insert_rows(
        conn, "events", _COLUMN_NAMES, rows, tail="RETURNING id, position"
    )
    positions: dict[str, int] = dict(returned)
    stored += sorted(
        (
            (
                e.id,
                positions[row[0]],
                e.type,
                e.workspace_id,
                e.stream_key,
                e.stream_seq,
                row[5],  # the payload's JSON text, as written
                e.occurred_at,
            )
            for e, row in zip(events, rows, strict=True)
        ),
        key=lambda values: values[1],
    )
    return events


async def emit_many_in(session: AsyncSession, new_events: Sequence[NewEvent]) -> list[WrittenEvent]:
    """`emit_many` at the driver, inside the session's transaction (same connection): for hot
    paths that keep SQLAlchemy's transaction but not its statement overhead."""
    if not new_events:
        return []
    conn = await driver_of(session)
    hooks = hooks_of(session)
    stored = _stored_rows(session, hooks)
    events = await emit_many(conn, session.get_bind().dialect.name, new_events, stored=stored)
    if stored is not None and hooks.events_stored is not None:
        after_commit(session, functools.partial(hooks.events_stored, stored), key=_WAKE_KEY)
    elif hooks.events_committed is not None:
        after_commit(session, hooks.events_committed, key=_WAKE_KEY)
    return events


def _stored_rows(session: AsyncSession, hooks: CommitHooks) -> list[tuple[Any, ...]] | None:
    """The list collecting this transaction's stored events for the dispatcher, or None when
    it must read them instead: no taker, or events written in a savepoint (a rolled-back one
    would hand out events that do not exist; the whole transaction then wakes the reader)."""
    if hooks.events_stored is None:
        return None
    if session.in_nested_transaction():
        session.info[_STORED_KEY] = None
        return None
    if _STORED_KEY not in session.info:
        session.info[_STORED_KEY] = []
    rows: list[tuple[Any, ...]] | None = session.info[_STORED_KEY]
    return rows
