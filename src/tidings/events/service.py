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
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import dialect_insert, new_id, utcnow
from tidings.db.database import after_commit, hooks_of
from tidings.events.models import Event, EventStream


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
) -> Event:
    [event] = await emit_many(session, [NewEvent(type, stream_key, payload or {}, workspace_id)])
    return event


async def emit_many(session: AsyncSession, new_events: Sequence[NewEvent]) -> list[Event]:
    by_stream: dict[str, list[NewEvent]] = defaultdict(list)
    for new_event in new_events:
        by_stream[new_event.stream_key].append(new_event)
    first_seq: dict[str, int] = {}
    # Streams are locked in sorted order so two transactions never deadlock on them.
    for stream_key in sorted(by_stream):
        count = len(by_stream[stream_key])
        last = await _advance_stream(session, stream_key, count)
        first_seq[stream_key] = last - count + 1
    now = utcnow()
    events: list[Event] = []
    for new_event in new_events:
        seq = first_seq[new_event.stream_key]
        first_seq[new_event.stream_key] = seq + 1
        events.append(
            Event(
                id=new_id(),
                type=new_event.type,
                workspace_id=new_event.workspace_id,
                stream_key=new_event.stream_key,
                stream_seq=seq,
                payload=new_event.payload,
                occurred_at=now,
            )
        )
    # A Core insert: the ORM unit of work costs more CPU than the write itself on this path.
    await session.execute(
        insert(Event.metadata.tables["events"]),
        [
            {
                "id": e.id,
                "type": e.type,
                "workspace_id": e.workspace_id,
                "stream_key": e.stream_key,
                "stream_seq": e.stream_seq,
                "payload": e.payload,
                "occurred_at": e.occurred_at,
            }
            for e in events
        ],
    )
    wake = hooks_of(session).events_committed
    if wake is not None:
        after_commit(session, wake, key="events_committed")
    return events


async def _advance_stream(session: AsyncSession, stream_key: str, count: int) -> int:
    statement = dialect_insert(session)(EventStream).values(stream_key=stream_key, last_seq=count)
    statement = statement.on_conflict_do_update(
        index_elements=[EventStream.stream_key],
        set_={"last_seq": EventStream.last_seq + count},
    ).returning(EventStream.last_seq)
    result = await session.execute(statement)
    last_seq: int = result.scalar_one()
    return last_seq


__all__ = ["NewEvent", "emit", "emit_many"]
