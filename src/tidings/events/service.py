"""Writing events: the only way a service records that something happened.

`emit` must be called inside `Database.transaction()`, with the state change it describes. The
event gets the next sequence of its stream under that stream's row lock, so sequences are
gap-free and commit in order; after COMMIT the dispatcher is woken.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import new_id


@dataclass(frozen=True, slots=True)
class WrittenEvent:
    """An event as `emit` wrote it (not an ORM object: building those cost more CPU than the
    INSERT on the send path)."""

    id: uuid.UUID
    type: str
    workspace_id: uuid.UUID | None
    stream_key: str
    stream_seq: int
    payload: dict[str, Any]
    occurred_at: datetime


@dataclass(frozen=True)
class NewEvent:
    type: str
    stream_key: str
    payload: dict[str, Any] = field(default_factory=dict)
    workspace_id: uuid.UUID | None = None


async def emit(
    session: AsyncSession,
    type: str,
    *,
    stream_key: str,
    payload: dict[str, Any] | None = None,
    workspace_id: uuid.UUID | None = None,
) -> WrittenEvent:
    [event] = await emit_many(session, [NewEvent(type, stream_key, payload or {}, workspace_id)])
    return event


async def emit_many(session: AsyncSession, new_events: Sequence[NewEvent]) -> list[WrittenEvent]:
    """Write `new_events` in the session's transaction; the dispatcher is woken after COMMIT.

    The rows are written at the driver, on the session's connection: through SQLAlchemy the
    two statements (advance the streams, insert the events) cost several times the CPU of the
    write itself, and most transactions in Tidings emit. What the ORM still holds is flushed
    first, since an event may refer to a row created in this transaction.
    """
    from tidings.events import store  # it builds on this module's statements and types

    if not new_events:
        return []
    await session.flush()
    return await store.emit_many_in(session, new_events)


def stream_counts(new_events: Sequence[NewEvent]) -> dict[str, int]:
    """How many events each stream gets."""
    counts: dict[str, int] = defaultdict(int)
    for new_event in new_events:
        counts[new_event.stream_key] += 1
    return counts


def sequenced(
    new_events: Sequence[NewEvent],
    counts: dict[str, int],
    last_seq: dict[str, int],
    now: datetime,
) -> list[WrittenEvent]:
    """The events with their sequences, given each stream's new last sequence."""
    # The first sequence of each stream in this transaction.
    next_seq = {
        stream_key: last_seq[stream_key] - count + 1 for stream_key, count in counts.items()
    }
    events: list[WrittenEvent] = []
    for new_event in new_events:
        seq = next_seq[new_event.stream_key]
        next_seq[new_event.stream_key] = seq + 1
        events.append(
            WrittenEvent(
                id=new_id(),
                type=new_event.type,
                workspace_id=new_event.workspace_id,
                stream_key=new_event.stream_key,
                stream_seq=seq,
                payload=new_event.payload,
                occurred_at=now,
            )
        )
    return events


# Every stream of a transaction is advanced by one statement, whatever their number (a send
# batch writes up to 1,000 events on 1,000 streams). The upsert row-locks each stream until
# COMMIT, in the order given: streams are passed sorted, so two transactions never deadlock
# on them. One statement text per dialect (arrays / a JSON object), prepared once.
PG_ADVANCE_SQL = (
    "INSERT INTO event_streams (stream_key, last_seq) "
    "SELECT * FROM unnest(CAST({keys} AS VARCHAR[]), CAST({counts} AS BIGINT[])) "
    "ON CONFLICT (stream_key) DO UPDATE SET last_seq = event_streams.last_seq + excluded.last_seq "
    "RETURNING stream_key, last_seq"
)
# `WHERE true` resolves SQLite's parsing ambiguity between a SELECT's join and ON CONFLICT.
SQLITE_ADVANCE_SQL = (
    "INSERT INTO event_streams (stream_key, last_seq) "
    "SELECT key, value FROM json_each({streams}) WHERE true "
    "ON CONFLICT (stream_key) DO UPDATE SET last_seq = last_seq + excluded.last_seq "
    "RETURNING stream_key, last_seq"
)
__all__ = ["NewEvent", "emit", "emit_many"]
