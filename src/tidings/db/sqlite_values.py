"""Values as SQLAlchemy stores them on SQLite, for statements run on the driver's connection.

UUIDs are 32 hex digits, datetimes naive UTC text ``YYYY-MM-DD HH:MM:SS.ffffff``, JSON text.
Rows written with these helpers read back through the ORM, and the other way round.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson


def to_time(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def read_time(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def to_uuid(value: uuid.UUID | None) -> str | None:
    return value.hex if value is not None else None


def read_uuid(text: str | None) -> uuid.UUID | None:
    return uuid.UUID(hex=text) if text is not None else None


def json_text(value: Any) -> str:
    """JSON as text: SQLite's JSON columns, and what asyncpg's jsonb codec (as SQLAlchemy sets
    it up) takes. Keys may be enums (a message's content is keyed by channel)."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
