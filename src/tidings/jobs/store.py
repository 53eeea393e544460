"""The job runner's hot statements, written per dialect against the driver's connection.

Enqueue (outside a business transaction), claim and completion run once per batch of jobs, and
through SQLAlchemy each cost about 1 ms of CPU, most of it in the connection, transaction and
execution machinery; the statement itself costs about 50 µs at the driver. These three are
therefore written by hand for SQLite and PostgreSQL and run on `Database.driver_connection()`
in autocommit: each is one statement, atomic on its own. Values are stored exactly as
SQLAlchemy stores them (SQLite: UUIDs as 32 hex digits, datetimes as naive UTC text
``YYYY-MM-DD HH:MM:SS.ffffff``, JSON as text), so the ORM reads these rows and this module
reads the ORM's. Everything else about jobs stays on SQLAlchemy.
"""

# ruff: noqa: S608 - the statements are composed of constants only; every value is bound.

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

import orjson

from tidings.db.sqlite_values import hex_array, insert_rows, json_text, read_time, to_time

_COLUMN_NAMES = (
    "id",
    "name",
    "payload",
    "status",
    "dedupe_key",
    "run_at",
    "published_at",
    "attempts",
    "max_attempts",
    "created_at",
    "locked_by",
    "lease_expires_at",
)
_COLUMNS = ", ".join(_COLUMN_NAMES)
_ACTIVE = "status IN ('queued', 'running')"
_ON_CONFLICT = f"ON CONFLICT (dedupe_key) WHERE {_ACTIVE} DO NOTHING"
_CLAIMED = "id, name, payload, attempts, max_attempts, run_at"

ClaimedRow = tuple[uuid.UUID, str, dict[str, Any], int, int, datetime]


class JobStore(Protocol):
    async def insert(self, conn: Any, rows: Sequence[dict[str, Any]]) -> set[uuid.UUID]:
        """Insert rows from `service.job_row` (leased ones with `locked_by` and
        `lease_expires_at`); the ids of the rows not inserted, because their dedupe key
        names an active job."""
        ...

    async def active_by_key(self, conn: Any, keys: Sequence[str]) -> dict[str, uuid.UUID]:
        """The queued or running job of each dedupe key."""
        ...

    async def claim(
        self, conn: Any, ids: Sequence[uuid.UUID], now: datetime, node: str, lease: datetime
    ) -> list[ClaimedRow]:
        """Queued and due jobs among `ids` → running, leased to `node`; the rows claimed."""
        ...

    async def complete(self, conn: Any, ids: Sequence[uuid.UUID], node: str, now: datetime) -> None:
        """Running jobs among `ids` still leased to `node` → succeeded."""
        ...


def _refused(
    rows: Sequence[dict[str, Any]],
    returned_ids: Sequence[Any],
    stored_id: Callable[[dict[str, Any]], Any],
) -> set[uuid.UUID]:
    """The ids of the rows an INSERT … RETURNING id did not return (`stored_id`: a row's id as
    the driver gives it back). Without dedupe keys every row comes back: no set is built."""
    if len(returned_ids) == len(rows):
        return set()
    inserted = set(returned_ids)
    return {row["id"] for row in rows if stored_id(row) not in inserted}


def store_for(dialect: str) -> JobStore:
    return _POSTGRES if dialect == "postgresql" else _SQLITE


# -- SQLite (aiosqlite) ---------------------------------------------------------------------


# Id lists travel as one JSON array: one statement text (and one prepared statement in
# SQLite's cache) whatever the count.
_SQLITE_IDS = "(SELECT value FROM json_each(?))"
# A claim or a completion finds its jobs by id and only checks their state: `(…) IS TRUE` keeps
# the state out of the planner's search terms. Without it, SQLite (always) and PostgreSQL
# (while its statistics lag behind a burst of jobs) searched the (status, …) indexes and read
# every queued or running job to pick out the few named (tests/db/test_index_use.py).
_SQLITE_CLAIM = (
    "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = ?, "
    f"lease_expires_at = ? WHERE id IN {_SQLITE_IDS} "
    "AND (status = 'queued' AND run_at <= ?) IS TRUE "
    f"RETURNING {_CLAIMED}"
)
_SQLITE_COMPLETE = (
    "UPDATE jobs SET status = 'succeeded', finished_at = ?, locked_by = NULL, "
    f"lease_expires_at = NULL WHERE id IN {_SQLITE_IDS} "
    "AND (locked_by = ? AND status = 'running') IS TRUE"
)
_SQLITE_ACTIVE_BY_KEY = (
    f"SELECT dedupe_key, id FROM jobs WHERE dedupe_key IN {_SQLITE_IDS} AND {_ACTIVE}"
)


class _SqliteStore:
    async def insert(self, conn: Any, rows: Sequence[dict[str, Any]]) -> set[uuid.UUID]:
        values = [
            (
                row["id"].hex,
                row["name"],
                json_text(row["payload"]),
                row["status"],
                row["dedupe_key"],
                to_time(row["run_at"]),
                to_time(row["published_at"]),
                row["attempts"],
                row["max_attempts"],
                to_time(row["created_at"]),
                row.get("locked_by"),
                to_time(row.get("lease_expires_at")),
            )
            for row in rows
        ]
        returned = await insert_rows(
            conn, "jobs", _COLUMN_NAMES, values, tail=f"{_ON_CONFLICT} RETURNING id"
        )
        return _refused(rows, [r[0] for r in returned], lambda row: row["id"].hex)

    async def active_by_key(self, conn: Any, keys: Sequence[str]) -> dict[str, uuid.UUID]:
        found = await conn.execute_fetchall(_SQLITE_ACTIVE_BY_KEY, (json_text(list(keys)),))
        return {key: uuid.UUID(hex=job_id) for key, job_id in found}

    async def claim(
        self, conn: Any, ids: Sequence[uuid.UUID], now: datetime, node: str, lease: datetime
    ) -> list[ClaimedRow]:
        params = (node, to_time(lease), hex_array(ids), to_time(now))
        return [
            (
                uuid.UUID(hex=job_id),
                name,
                orjson.loads(payload),
                attempts,
                max_attempts,
                read_time(run_at),
            )
            for job_id, name, payload, attempts, max_attempts, run_at in (
                await conn.execute_fetchall(_SQLITE_CLAIM, params)
            )
        ]

    async def complete(self, conn: Any, ids: Sequence[uuid.UUID], node: str, now: datetime) -> None:
        await conn.execute_fetchall(_SQLITE_COMPLETE, (to_time(now), hex_array(ids), node))


# -- PostgreSQL (asyncpg) -------------------------------------------------------------------
# Arrays and unnest(): one statement text, prepared once per connection, whatever the count.
# SQLAlchemy's asyncpg dialect registers a jsonb codec on its connections: it takes JSON text
# and gives back the decoded value.

_PG_INSERT = (
    f"INSERT INTO jobs ({_COLUMNS}) SELECT * FROM unnest($1::uuid[], $2::varchar[], "
    "$3::jsonb[], $4::varchar[], $5::varchar[], $6::timestamptz[], $7::timestamptz[], "
    f"$8::int[], $9::int[], $10::timestamptz[], $11::varchar[], $12::timestamptz[]) "
    f"{_ON_CONFLICT} RETURNING id"
)
# Found by id, their state only checked (see _SQLITE_CLAIM).
_PG_CLAIM = (
    "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_by = $1, "
    "lease_expires_at = $2 WHERE id = ANY($3::uuid[]) "
    "AND (status = 'queued' AND run_at <= $4) IS TRUE "
    f"RETURNING {_CLAIMED}"
)
_PG_COMPLETE = (
    "UPDATE jobs SET status = 'succeeded', finished_at = $1, locked_by = NULL, "
    "lease_expires_at = NULL WHERE id = ANY($2::uuid[]) "
    "AND (locked_by = $3 AND status = 'running') IS TRUE"
)
_PG_ACTIVE_BY_KEY = (
    f"SELECT dedupe_key, id FROM jobs WHERE dedupe_key = ANY($1::varchar[]) AND {_ACTIVE}"
)


class _PostgresStore:
    async def insert(self, conn: Any, rows: Sequence[dict[str, Any]]) -> set[uuid.UUID]:
        returned = await conn.fetch(
            _PG_INSERT,
            [row["id"] for row in rows],
            [row["name"] for row in rows],
            [json_text(row["payload"]) for row in rows],
            [row["status"] for row in rows],
            [row["dedupe_key"] for row in rows],
            [row["run_at"] for row in rows],
            [row["published_at"] for row in rows],
            [row["attempts"] for row in rows],
            [row["max_attempts"] for row in rows],
            [row["created_at"] for row in rows],
            [row.get("locked_by") for row in rows],
            [row.get("lease_expires_at") for row in rows],
        )
        return _refused(rows, [r[0] for r in returned], lambda row: row["id"])

    async def active_by_key(self, conn: Any, keys: Sequence[str]) -> dict[str, uuid.UUID]:
        found = await conn.fetch(_PG_ACTIVE_BY_KEY, list(keys))
        return {row[0]: row[1] for row in found}

    async def claim(
        self, conn: Any, ids: Sequence[uuid.UUID], now: datetime, node: str, lease: datetime
    ) -> list[ClaimedRow]:
        rows = await conn.fetch(_PG_CLAIM, node, lease, list(ids), now)
        return [tuple(row) for row in rows]

    async def complete(self, conn: Any, ids: Sequence[uuid.UUID], node: str, now: datetime) -> None:
        await conn.execute(_PG_COMPLETE, now, list(ids), node)


_SQLITE = _SqliteStore()
_POSTGRES = _PostgresStore()
