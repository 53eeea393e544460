"""Values as SQLAlchemy stores them on SQLite, for statements run on the driver's connection.

UUIDs are 32 hex digits, datetimes naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``, JSON text.
Rows written with these helpers read back through the ORM, and the other way round.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import orjson


@lru_cache(maxsize=1024)
def to_time(moment: datetime | None) -> str | None:
    # Cached: the rows of one transaction mostly share a few moments (its `now`, a batch's
    # `send_at`), and formatting costs 17 times a lookup.
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def read_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def to_uuid(value: uuid.UUID | None) -> str | None:
    return value.hex if value is not None else None


def read_uuid(text: str | None) -> uuid.UUID | None:
    return uuid.UUID(hex=text) if text is not None else None


def hex_array(ids: Sequence[uuid.UUID]) -> str:
    """Ids as one bound JSON array, read with `json_each(?)`: one statement text, whatever the
    count."""
    return orjson.dumps([value.hex for value in ids]).decode()


# SQLite binds at most 32,766 variables per statement.
_MAX_VARIABLES = 32_766


@lru_cache(maxsize=128)
def _insert_sql(table: str, columns: tuple[str, ...], count: int, tail: str) -> str:
    row = "(" + ", ".join(["?"] * len(columns)) + ")"
    values = ", ".join([row] * count)
    # Table and column names are the callers' constants; every value is bound.
    names = ", ".join(columns)
    return f"INSERT INTO {table} ({names}) VALUES {values} {tail}".rstrip()  # noqa: S608


async def insert_rows(
    conn: Any,
    table: str,
    columns: tuple[str, ...],
    rows: Sequence[Sequence[Any]],
    *,
    tail: str = "",
) -> list[Any]:
    """Multi-row INSERTs of `rows` (values in `columns` order, already as stored), as few
    statements as SQLite's variable limit allows; what `tail` (ON CONFLICT, RETURNING)
    returns, for all of them."""
    per_statement = _MAX_VARIABLES // len(columns)
    returned: list[Any] = []
    for start in range(0, len(rows), per_statement):
        chunk = rows[start : start + per_statement]
        params = [value for row in chunk for value in row]
        returned += await conn.execute_fetchall(
            _insert_sql(table, columns, len(chunk), tail), params
        )
    return returned


def json_text(value: Any) -> str:
    """JSON as text: SQLite's JSON columns, and what asyncpg's jsonb codec (as SQLAlchemy sets
    it up) takes. Keys may be enums (a message's content is keyed by channel)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
