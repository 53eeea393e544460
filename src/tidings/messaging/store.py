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
from tidings.http.problems import NotFound
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
# Every (conversation, user, seq) of a batch: one JSON array of triples.
_SQLITE_READ_UP_TO = (
    "UPDATE conversation_members SET last_read_seq = p.seq FROM (SELECT "
    "json_extract(value, '$[0]') AS conversation_id, json_extract(value, '$[1]') AS user_id, "
    "json_extract(value, '$[2]') AS seq FROM json_each(?)) AS p "
    "WHERE conversation_members.conversation_id = p.conversation_id "
    "AND conversation_members.user_id = p.user_id AND conversation_members.last_read_seq < p.seq"
)


# The conversation (if its workspace is not deleted) with the caller's role, membership and name,
# as `access.load_access` reads them: for one pair ($1 / ?1 the conversation, $2 / ?2 the user or
# the key), or for every (conversation, caller) pair of a batch, the pair's index first.
_CONVERSATION_FACTS = (
    "SELECT {first}c.id, c.workspace_id, c.kind, c.created_by, c.archived_at IS NOT NULL, "
    "{caller} FROM {source} JOIN workspaces w ON w.id = c.workspace_id {joins} "
    "WHERE {where}w.deleted_at IS NULL"
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
# A batch's pairs: two arrays (PostgreSQL), one JSON array of [index, conversation, caller]
# (SQLite).
_PG_PAIRS = (
    "unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS p(conversation_id, caller_id, ord) "
    "JOIN conversations c ON c.id = p.conversation_id"
)
_SQLITE_PAIRS = (
    "(SELECT json_extract(value, '$[0]') AS ord, json_extract(value, '$[1]') AS conversation_id, "
    "json_extract(value, '$[2]') AS caller_id FROM json_each(?)) AS p "
    "JOIN conversations c ON c.id = p.conversation_id"
)


def _facts_statement(user: bool, placeholder: str | None = None, pairs: str = "") -> str:
    """One pair's statement (`placeholder`: "${}" or "?{}"), or a batch's (`pairs`)."""
    caller = placeholder.format(2) if placeholder else "p.caller_id"
    return _CONVERSATION_FACTS.format(
        first="" if placeholder else "p.ord, ",
        caller=_USER_CALLER if user else _KEY_CALLER,
        source="conversations c" if placeholder else pairs,
        joins=(_USER_JOINS.format(user=caller) if user else _KEY_JOINS.format(key=caller)),
        where=f"c.id = {placeholder.format(1)} AND " if placeholder else "",
    )


_PG_USER_FACTS = _facts_statement(True, "${}") + _PG_LOCK
_PG_KEY_FACTS = _facts_statement(False, "${}") + _PG_LOCK
_SQLITE_USER_FACTS = _facts_statement(True, "?{}")
_SQLITE_KEY_FACTS = _facts_statement(False, "?{}")
_PG_USER_BATCH_FACTS = _facts_statement(True, pairs=_PG_PAIRS)
_PG_KEY_BATCH_FACTS = _facts_statement(False, pairs=_PG_PAIRS)
_SQLITE_USER_BATCH_FACTS = _facts_statement(True, pairs=_SQLITE_PAIRS)
_SQLITE_KEY_BATCH_FACTS = _facts_statement(False, pairs=_SQLITE_PAIRS)
# PostgreSQL: the batch's conversation rows locked first, in id order (rows are locked as the
# sort hands them over), the order every batch and every single send uses: no deadlock.
_PG_LOCK_CONVERSATIONS = (
    "SELECT id FROM conversations WHERE id = ANY($1::uuid[]) ORDER BY id FOR NO KEY UPDATE"
)


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def load_send_access(
    session: AsyncSession, principal: Principal, conversation_id: uuid.UUID
) -> SendAccess:
    """A sender's relation to the conversation, its row locked until COMMIT; 404 if it does
    not exist (or its workspace was deleted). `access.check` decides what the caller may do."""
    conn = await driver_of(session)
    user = isinstance(principal, UserPrincipal)
    caller_id = _caller_id(principal)
    if _dialect(session) == "postgresql":
        statement = _PG_USER_FACTS if user else _PG_KEY_FACTS
        row = await conn.fetchrow(statement, conversation_id, caller_id)
        if row is None:
            raise conversation_not_found()
        return _send_access(*row)
    statement = _SQLITE_USER_FACTS if user else _SQLITE_KEY_FACTS
    rows = await conn.execute_fetchall(statement, (conversation_id.hex, caller_id.hex))
    if not rows:
        raise conversation_not_found()
    return _sqlite_send_access(rows[0])


async def load_send_accesses(
    session: AsyncSession, pairs: Sequence[tuple[Principal, uuid.UUID]]
) -> list[SendAccess | None]:
    """`load_send_access` for every (sender, conversation) pair of a batch, in the order given:
    a handful of statements whatever the number of senders (None: no such conversation)."""
    if len(pairs) == 1:
        principal, conversation_id = pairs[0]
        try:
            return [await load_send_access(session, principal, conversation_id)]
        except NotFound:
            return [None]
    conn = await driver_of(session)
    postgres = _dialect(session) == "postgresql"
    if postgres:
        await conn.fetch(_PG_LOCK_CONVERSATIONS, list({c for _, c in pairs}))
    found: list[SendAccess | None] = [None] * len(pairs)
    for user in (True, False):
        chosen = [
            (index, conversation_id, _caller_id(principal))
            for index, (principal, conversation_id) in enumerate(pairs)
            if isinstance(principal, UserPrincipal) is user
        ]
        if not chosen:
            continue
        if postgres:
            statement = _PG_USER_BATCH_FACTS if user else _PG_KEY_BATCH_FACTS
            rows = await conn.fetch(
                statement, [c for _, c, _ in chosen], [caller for _, _, caller in chosen]
            )
            # WITH ORDINALITY counts from 1 within `chosen`.
            for row in rows:
                found[chosen[row[0] - 1][0]] = _send_access(*row[1:])
            continue
        statement = _SQLITE_USER_BATCH_FACTS if user else _SQLITE_KEY_BATCH_FACTS
        listed = sv.json_text([[index, c.hex, caller.hex] for index, c, caller in chosen])
        for ord_, *facts in await conn.execute_fetchall(statement, (listed,)):
            found[ord_] = _sqlite_send_access(facts)
    return found


def _caller_id(principal: Principal) -> uuid.UUID:
    return principal.user_id if isinstance(principal, UserPrincipal) else principal.key_id


def _sqlite_send_access(row: Sequence[Any]) -> SendAccess:
    # UUIDs as SQLAlchemy stores them on SQLite (32 hex digits).
    cid, workspace_id, kind, created_by, *caller = row
    return _send_access(
        uuid.UUID(hex=cid), uuid.UUID(hex=workspace_id), kind, sv.read_uuid(created_by), *caller
    )


def _send_access(
    cid: uuid.UUID,
    workspace_id: uuid.UUID,
    kind: str,
    created_by: uuid.UUID | None,
    archived: Any,
    role: str | None,
    is_member: Any,
    name: str | None,
) -> SendAccess:
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
    listed = sv.json_text([[c.hex, u.hex, seq] for (c, u), seq in positions.items()])
    await conn.execute_fetchall(_SQLITE_READ_UP_TO, (listed,))
