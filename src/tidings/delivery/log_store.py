"""The delivery log's hot statements, written per dialect against the driver's connection.

Every delivery starts (`sending`, one more attempt) and finishes (its attempt rows, its new
status) once per attempt, each with an event. Through SQLAlchemy's session these transactions
cost several times the statements' own CPU (bench.delivery: at 200 sends/s they kept a core
busy), so, like the job runner's claim (`jobs.store`), they are written here by hand and run
inside `Database.driver_transaction()`. Values are stored as SQLAlchemy stores them
(`db.sqlite_values`), so the ORM reads these rows and the other way round.
"""

# ruff: noqa: S608 - the statements are composed of constants only; every value is bound.

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import orjson

from tidings.db import sqlite_values as sv
from tidings.delivery.statuses import MessageStatus

# The fields of MessageView a delivery event needs, in its order; a start adds the content.
_VIEW = "id, workspace_id, recipient, connector_id, route_id, metadata, attempts"
_STARTABLE = f"('{MessageStatus.QUEUED.value}', '{MessageStatus.SENDING.value}')"
# A message's state is checked on the rows the ids name, never used to find them (`IS TRUE`,
# as jobs.store's claim does): the planners otherwise read every queued or sending message
# through ix_outbound_messages_workspace_status to pick out the few named.
_UNTRIED = f"(status = '{MessageStatus.QUEUED.value}' AND attempts = 0) IS TRUE"
_SENDING = f"'{MessageStatus.SENDING.value}'"
# The columns of an attempt row, named as `AttemptRecord`'s fields.
ATTEMPT_FIELDS = (
    "id",
    "message_id",
    "number",
    "connector_id",
    "started_at",
    "finished_at",
    "outcome",
    "error_class",
    "provider_status",
    "provider_response",
    "latency_ms",
)
_ATTEMPT_COLUMNS = ", ".join(ATTEMPT_FIELDS)
# The columns an accept writes (the others start NULL).
MESSAGE_COLUMNS = (
    "id",
    "workspace_id",
    "api_key_id",
    "recipient",
    "route_id",
    "connector_id",
    "template_id",
    "template_version",
    "content",
    "metadata",
    "status",
    "send_at",
    "attempts",
    "created_at",
    "updated_at",
    "job_id",
)
_JSON_COLUMNS = frozenset({"content", "metadata"})
# An accept's rows are keyed by the model's attribute names: `metadata` is taken on ORM classes.
_MESSAGE_KEYS = tuple("message_metadata" if c == "metadata" else c for c in MESSAGE_COLUMNS)


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A message as the delivery log read or wrote it."""

    id: uuid.UUID
    workspace_id: uuid.UUID
    recipient: str
    connector_id: uuid.UUID | None
    route_id: uuid.UUID | None
    message_metadata: dict[str, Any]
    attempts: int
    content: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """The new values of a message whose attempt ended (None keeps the current value of the
    connector, the provider's id and the two timestamps)."""

    message_id: uuid.UUID
    status: str
    connector_id: uuid.UUID | None
    provider_message_id: str | None
    sent_at: datetime | None
    finished_at: datetime | None
    error: str | None
    error_class: str | None


class DeliveryLogStore(Protocol):
    async def insert_messages(self, conn: Any, rows: Sequence[dict[str, Any]]) -> None:
        """Insert accepted messages: `Deliveries._prepare`'s values (keyed by the model's
        attribute names) with their `job_id`."""
        ...

    async def start(self, conn: Any, ids: Sequence[uuid.UUID], now: datetime) -> list[MessageRow]:
        """Messages among `ids` still queued or sending → sending, one more attempt; those
        rows, with their content."""
        ...

    async def untried(self, conn: Any, ids: Sequence[uuid.UUID]) -> list[MessageRow]:
        """Messages among `ids` still queued and never tried, with their content (a read)."""
        ...

    async def add_attempts(self, conn: Any, attempts: Sequence[dict[str, Any]]) -> None:
        """Insert attempt rows (the values of `AttemptRecord`)."""
        ...

    async def finish(
        self, conn: Any, outcomes: Sequence[Outcome], now: datetime
    ) -> dict[uuid.UUID, MessageRow]:
        """Apply each outcome to its message if it is still `sending` (one per message); the
        rows changed, as they are now."""
        ...


def store_for(dialect: str) -> DeliveryLogStore:
    return _POSTGRES if dialect == "postgresql" else _SQLITE


# -- PostgreSQL (asyncpg; SQLAlchemy's jsonb codec decodes JSON columns) ----------------------

_PG_START = (
    f"UPDATE outbound_messages SET status = {_SENDING}, attempts = attempts + 1, "
    f"updated_at = $1 WHERE id = ANY($2::uuid[]) AND (status IN {_STARTABLE}) IS TRUE "
    f"RETURNING {_VIEW}, content"
)
_PG_UNTRIED = (
    f"SELECT {_VIEW}, content FROM outbound_messages WHERE id = ANY($1::uuid[]) AND {_UNTRIED}"
)
_PG_ATTEMPTS = (
    f"INSERT INTO delivery_attempts ({_ATTEMPT_COLUMNS}) SELECT * FROM unnest($1::uuid[], "
    "$2::uuid[], $3::int[], $4::uuid[], $5::timestamptz[], $6::timestamptz[], $7::varchar[], "
    "$8::varchar[], $9::int[], $10::text[], $11::float8[])"
)
# One statement checks (`sending`), locks and updates every message of the batch.
_PG_FINISH = (
    "UPDATE outbound_messages AS m SET status = u.status, updated_at = $1, "
    "connector_id = coalesce(u.connector_id, m.connector_id), "
    "provider_message_id = coalesce(u.provider_message_id, m.provider_message_id), "
    "sent_at = coalesce(u.sent_at, m.sent_at), "
    "finished_at = coalesce(u.finished_at, m.finished_at), "
    "error = u.error, error_class = u.error_class "
    "FROM unnest($2::uuid[], $3::varchar[], $4::uuid[], $5::varchar[], $6::timestamptz[], "
    "$7::timestamptz[], $8::text[], $9::varchar[]) "
    "AS u(id, status, connector_id, provider_message_id, sent_at, finished_at, error, error_class) "
    f"WHERE m.id = u.id AND (m.status = {_SENDING}) IS TRUE "
    "RETURNING m.id, m.workspace_id, m.recipient, m.connector_id, m.route_id, m.metadata, "
    "m.attempts"
)


_PG_MESSAGES = (
    f"INSERT INTO outbound_messages ({', '.join(MESSAGE_COLUMNS)}) SELECT * FROM unnest("
    "$1::uuid[], $2::uuid[], $3::uuid[], $4::varchar[], $5::uuid[], $6::uuid[], $7::uuid[], "
    "$8::int[], $9::jsonb[], $10::jsonb[], $11::varchar[], $12::timestamptz[], $13::int[], "
    "$14::timestamptz[], $15::timestamptz[], $16::uuid[])"
)


class _PostgresStore:
    async def insert_messages(self, conn: Any, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            await conn.execute(
                _PG_MESSAGES,
                *(
                    [sv.json_text(r[key]) for r in rows]
                    if column in _JSON_COLUMNS
                    else [r[key] for r in rows]
                    for column, key in zip(MESSAGE_COLUMNS, _MESSAGE_KEYS, strict=True)
                ),
            )

    async def start(self, conn: Any, ids: Sequence[uuid.UUID], now: datetime) -> list[MessageRow]:
        return [MessageRow(*row) for row in await conn.fetch(_PG_START, now, list(ids))]

    async def untried(self, conn: Any, ids: Sequence[uuid.UUID]) -> list[MessageRow]:
        return [MessageRow(*row) for row in await conn.fetch(_PG_UNTRIED, list(ids))]

    async def add_attempts(self, conn: Any, attempts: Sequence[dict[str, Any]]) -> None:
        if attempts:
            await conn.execute(
                _PG_ATTEMPTS, *([a[column] for a in attempts] for column in ATTEMPT_FIELDS)
            )

    async def finish(
        self, conn: Any, outcomes: Sequence[Outcome], now: datetime
    ) -> dict[uuid.UUID, MessageRow]:
        if not outcomes:
            return {}
        rows = await conn.fetch(
            _PG_FINISH,
            now,
            *([getattr(o, field) for o in outcomes] for field in _OUTCOME_FIELDS),
        )
        return {row[0]: MessageRow(*row) for row in rows}


# -- SQLite (aiosqlite) ----------------------------------------------------------------------

_SQLITE_IDS = "(SELECT value FROM json_each(?))"
_SQLITE_START = (
    f"UPDATE outbound_messages SET status = {_SENDING}, attempts = attempts + 1, "
    f"updated_at = ? WHERE id IN {_SQLITE_IDS} AND (status IN {_STARTABLE}) IS TRUE "
    f"RETURNING {_VIEW}, content"
)
_SQLITE_UNTRIED = (
    f"SELECT {_VIEW}, content FROM outbound_messages WHERE id IN {_SQLITE_IDS} AND {_UNTRIED}"
)
_SQLITE_SENDING = (
    f"SELECT {_VIEW} FROM outbound_messages WHERE id IN {_SQLITE_IDS} "
    f"AND (status = {_SENDING}) IS TRUE"
)
_SQLITE_FINISH = (
    "UPDATE outbound_messages SET status = ?, updated_at = ?, "
    "connector_id = coalesce(?, connector_id), "
    "provider_message_id = coalesce(?, provider_message_id), "
    "sent_at = coalesce(?, sent_at), finished_at = coalesce(?, finished_at), "
    "error = ?, error_class = ? WHERE id = ?"
)


def _sqlite_row(row: Sequence[Any]) -> MessageRow:
    message_id, workspace_id, recipient, connector_id, route_id, metadata, attempts = row[:7]
    return MessageRow(
        uuid.UUID(hex=message_id),
        uuid.UUID(hex=workspace_id),
        recipient,
        sv.read_uuid(connector_id),
        sv.read_uuid(route_id),
        orjson.loads(metadata),
        attempts,
        orjson.loads(row[7]) if len(row) > 7 else None,
    )


class _SqliteStore:
    async def insert_messages(self, conn: Any, rows: Sequence[dict[str, Any]]) -> None:
        values = [
            (
                r["id"].hex,
                r["workspace_id"].hex,
                sv.to_uuid(r["api_key_id"]),
                r["recipient"],
                sv.to_uuid(r["route_id"]),
                sv.to_uuid(r["connector_id"]),
                sv.to_uuid(r["template_id"]),
                r["template_version"],
                sv.json_text(r["content"]),
                sv.json_text(r["message_metadata"]),
                str(r["status"]),
                sv.to_time(r["send_at"]),
                r["attempts"],
                sv.to_time(r["created_at"]),
                sv.to_time(r["updated_at"]),
                sv.to_uuid(r["job_id"]),
            )
            for r in rows
        ]
        await sv.insert_rows(conn, "outbound_messages", MESSAGE_COLUMNS, values)

    async def start(self, conn: Any, ids: Sequence[uuid.UUID], now: datetime) -> list[MessageRow]:
        rows = await conn.execute_fetchall(_SQLITE_START, (sv.to_time(now), sv.hex_array(ids)))
        return [_sqlite_row(row) for row in rows]

    async def untried(self, conn: Any, ids: Sequence[uuid.UUID]) -> list[MessageRow]:
        rows = await conn.execute_fetchall(_SQLITE_UNTRIED, (sv.hex_array(ids),))
        return [_sqlite_row(row) for row in rows]

    async def add_attempts(self, conn: Any, attempts: Sequence[dict[str, Any]]) -> None:
        values = [
            (
                a["id"].hex,
                a["message_id"].hex,
                a["number"],
                sv.to_uuid(a["connector_id"]),
                sv.to_time(a["started_at"]),
                sv.to_time(a["finished_at"]),
                a["outcome"],
                a["error_class"],
                a["provider_status"],
                a["provider_response"],
                a["latency_ms"],
            )
            for a in attempts
        ]
        await sv.insert_rows(conn, "delivery_attempts", ATTEMPT_FIELDS, values)

    async def finish(
        self, conn: Any, outcomes: Sequence[Outcome], now: datetime
    ) -> dict[uuid.UUID, MessageRow]:
        if not outcomes:
            return {}
        # The write lock is held since BEGIN IMMEDIATE: what this reads stays true until COMMIT.
        sending = {
            row.id: row
            for row in map(
                _sqlite_row,
                await conn.execute_fetchall(
                    _SQLITE_SENDING, (sv.hex_array([o.message_id for o in outcomes]),)
                ),
            )
        }
        changed = [o for o in outcomes if o.message_id in sending]
        if changed:
            stamp = sv.to_time(now)
            await conn.executemany(
                _SQLITE_FINISH,
                [
                    (
                        o.status,
                        stamp,
                        sv.to_uuid(o.connector_id),
                        o.provider_message_id,
                        sv.to_time(o.sent_at),
                        sv.to_time(o.finished_at),
                        o.error,
                        o.error_class,
                        o.message_id.hex,
                    )
                    for o in changed
                ],
            )
        return {
            # As PostgreSQL's RETURNING gives it: the connector coalesced with the new one.
            o.message_id: replace(
                sending[o.message_id],
                connector_id=o.connector_id or sending[o.message_id].connector_id,
            )
            for o in changed
        }


_OUTCOME_FIELDS = (
    "message_id",
    "status",
    "connector_id",
    "provider_message_id",
    "sent_at",
    "finished_at",
    "error",
    "error_class",
)
_POSTGRES = _PostgresStore()
_SQLITE = _SqliteStore()
