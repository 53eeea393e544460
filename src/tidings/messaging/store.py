"""The statements of a chat send, at the driver, inside the session's transaction.

A send's access check and replay lookup stay in the ORM; what it writes (the conversation's
sequence, the messages, the sender's read position) goes to the driver on the session's own
connection (`driver_of`), written per dialect. Through SQLAlchemy these statements cost about
5 ms of CPU for a single message (bench.realtime, paced), several times the database's own
work; `events.service.emit_many` does the same for the events.
"""

# ruff: noqa: S608 - the statements are composed of constants only; every value is bound.

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db import sqlite_values as sv
from tidings.db.database import driver_of

# In the order of the INSERT; `Messages._insert` builds each row's values under these keys.
MESSAGE_COLUMNS = (
    "id",
    "conversation_id",
    "workspace_id",
    "seq",
    "sender_kind",
    "sender_id",
    "sender_name",
    "body",
    "client_id",
    "fingerprint",
    "mentions",
    "thread_root_id",
    "reply_count",
    "last_reply_at",
    "created_at",
    "edited_at",
    "deleted_at",
    "pinned_at",
    "pinned_by",
)
_UUIDS = {"id", "conversation_id", "workspace_id", "sender_id", "thread_root_id", "pinned_by"}
_TIMES = {"last_reply_at", "created_at", "edited_at", "deleted_at", "pinned_at"}
_PG_TYPES = {
    "seq": "bigint",
    "sender_kind": "varchar",
    "sender_name": "varchar",
    "body": "text",
    "client_id": "varchar",
    "fingerprint": "varchar",
    "mentions": "jsonb",
    "reply_count": "int",
    **dict.fromkeys(_UUIDS, "uuid"),
    **dict.fromkeys(_TIMES, "timestamptz"),
}
_PG_INSERT = (
    f"INSERT INTO messages ({', '.join(MESSAGE_COLUMNS)}) SELECT * FROM unnest("
    + ", ".join(f"${n}::{_PG_TYPES[c]}[]" for n, c in enumerate(MESSAGE_COLUMNS, start=1))
    + ")"
)
_PG_ADVANCE = (
    "UPDATE conversations SET last_seq = last_seq + $1, last_message_at = $2 WHERE id = $3 "
    "RETURNING last_seq"
)
_SQLITE_ADVANCE = (
    "UPDATE conversations SET last_seq = last_seq + ?, last_message_at = ? WHERE id = ? "
    "RETURNING last_seq"
)
_PG_READ_UP_TO = (
    "UPDATE conversation_members SET last_read_seq = $3 "
    "WHERE conversation_id = $1 AND user_id = $2 AND last_read_seq < $3"
)
_SQLITE_READ_UP_TO = (
    "UPDATE conversation_members SET last_read_seq = ? "
    "WHERE conversation_id = ? AND user_id = ? AND last_read_seq < ?"
)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def advance_sequence(
    session: AsyncSession, conversation_id: uuid.UUID, count: int, now: datetime
) -> int:
    """Add `count` to the conversation's last sequence (its row is locked until COMMIT); the
    new last sequence. The caller locked the row already (`authorize(..., lock=True)`)."""
    conn = await driver_of(session)
    if _dialect(session) == "postgresql":
        last: int = await conn.fetchval(_PG_ADVANCE, count, now, conversation_id)
        return last
    rows = await conn.execute_fetchall(
        _SQLITE_ADVANCE, (count, sv.to_time(now), conversation_id.hex)
    )
    return int(rows[0][0])


async def insert_messages(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Insert messages given as values keyed by `MESSAGE_COLUMNS`."""
    if not rows:
        return
    conn = await driver_of(session)
    if _dialect(session) == "postgresql":
        await conn.execute(
            _PG_INSERT,
            *(
                [sv.json_text(r[column]) for r in rows]
                if column == "mentions"
                else [r[column] for r in rows]
                for column in MESSAGE_COLUMNS
            ),
        )
        return
    await sv.insert_rows(
        conn,
        "messages",
        MESSAGE_COLUMNS,
        [tuple(_sqlite_value(column, row[column]) for column in MESSAGE_COLUMNS) for row in rows],
    )


def _sqlite_value(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _UUIDS:
        return value.hex
    if column in _TIMES:
        return sv.to_time(value)
    if column == "mentions":
        return sv.json_text(value)
    return value


async def read_up_to(
    session: AsyncSession, positions: dict[tuple[uuid.UUID, uuid.UUID], int]
) -> None:
    """Move each (conversation, user)'s read position forward to the given sequence."""
    if not positions:
        return
    conn = await driver_of(session)
    if _dialect(session) == "postgresql":
        await conn.executemany(_PG_READ_UP_TO, [(c, u, seq) for (c, u), seq in positions.items()])
        return
    for (conversation_id, user_id), seq in positions.items():
        await conn.execute_fetchall(
            _SQLITE_READ_UP_TO, (seq, conversation_id.hex, user_id.hex, seq)
        )
