"""The statements of a chat send, at the driver, inside the session's transaction.

A send's access check (the facts only: the rules stay in `messaging.access`) and what it
writes (the conversation's sequence, the messages, the sender's read position) go to the driver
on the session's own connection (`driver_of`), written per dialect. Through SQLAlchemy these
statements cost about 5 ms of CPU for a single message (bench.realtime, paced), several times
the database's own work; `events.service.emit_many` does the same for the events. The replay
lookup, thread roots, mentions and followers stay in the ORM: they are not on every send.
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
from tidings.identity.policy import Principal, UserPrincipal
from tidings.identity.roles import Role
from tidings.messaging.access import ConversationRef, SendAccess, conversation_not_found

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


# The conversation (if its workspace is not deleted) with the caller's role, membership and name,
# as `access.load_access` reads them. $1 / ?1 the conversation, $2 / ?2 the user or the key.
_CONVERSATION_FACTS = (
    "SELECT c.id, c.workspace_id, c.kind, c.created_by, c.archived_at IS NOT NULL, {caller} "
    "FROM conversations c JOIN workspaces w ON w.id = c.workspace_id {joins} "
    "WHERE c.id = {conversation} AND w.deleted_at IS NULL"
)
_USER_CALLER = "m.role, cm.user_id IS NOT NULL, u.display_name"
_USER_JOINS = (
    "LEFT JOIN users u ON u.id = {user} "
    "LEFT JOIN memberships m ON m.workspace_id = c.workspace_id AND m.user_id = {user} "
    "LEFT JOIN conversation_members cm ON cm.conversation_id = c.id AND cm.user_id = {user}"
)
_KEY_CALLER = "NULL, false, k.name"
_KEY_JOINS = "JOIN api_keys k ON k.id = {key}"
# What a sender takes on PostgreSQL (SQLite's one writer needs nothing): see `load_access`.
_PG_LOCK = " FOR NO KEY UPDATE OF c"


def _facts_statement(user: bool, placeholder: str) -> str:
    conversation, caller = placeholder.format(1), placeholder.format(2)
    return _CONVERSATION_FACTS.format(
        caller=_USER_CALLER if user else _KEY_CALLER,
        joins=(_USER_JOINS.format(user=caller) if user else _KEY_JOINS.format(key=caller)),
        conversation=conversation,
    )


_PG_USER_FACTS = _facts_statement(True, "${}") + _PG_LOCK
_PG_KEY_FACTS = _facts_statement(False, "${}") + _PG_LOCK
_SQLITE_USER_FACTS = _facts_statement(True, "?{}")
_SQLITE_KEY_FACTS = _facts_statement(False, "?{}")


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def load_send_access(
    session: AsyncSession, principal: Principal, conversation_id: uuid.UUID
) -> SendAccess:
    """A sender's relation to the conversation, its row locked until COMMIT; 404 if it does
    not exist (or its workspace was deleted). `access.check` decides what the caller may do."""
    conn = await driver_of(session)
    user = isinstance(principal, UserPrincipal)
    caller_id = principal.user_id if isinstance(principal, UserPrincipal) else principal.key_id
    if _dialect(session) == "postgresql":
        statement = _PG_USER_FACTS if user else _PG_KEY_FACTS
        row = await conn.fetchrow(statement, conversation_id, caller_id)
        if row is None:
            raise conversation_not_found()
        cid, workspace_id, kind, created_by, archived, role, is_member, name = row
    else:
        statement = _SQLITE_USER_FACTS if user else _SQLITE_KEY_FACTS
        rows = await conn.execute_fetchall(statement, (conversation_id.hex, caller_id.hex))
        if not rows:
            raise conversation_not_found()
        cid, workspace_id, kind, created_by, archived, role, is_member, name = rows[0]
        cid, workspace_id = uuid.UUID(hex=cid), uuid.UUID(hex=workspace_id)
        created_by = sv.read_uuid(created_by)
    conversation = ConversationRef(cid, workspace_id, kind, created_by, bool(archived))
    return SendAccess(conversation, Role(role) if role else None, bool(is_member), name or "")


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
