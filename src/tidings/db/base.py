"""Declarative base and column types shared by every domain's tables."""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, MetaData, TypeDecorator, Uuid
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names, so migrations are the same on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants a 64-bit identity.
BigIntPK = BigInteger().with_variant(Integer(), "sqlite")
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both engines (SQLite would hand back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime(), uuid.UUID: Uuid()}


def utcnow() -> datetime:
    return datetime.now(UTC)


_UUID7_VERSION_AND_VARIANT = (0x7 << 76) | (0b10 << 62)
_RANDOM_62_BITS = (1 << 62) - 1
_last_stamp = 0  # the time field of this process's latest id, in 1/4096 ms


def new_id() -> uuid.UUID:
    """A UUIDv7 (RFC 9562): Unix milliseconds (48 bits), the fraction of the millisecond (12
    bits, the RFC's method 3) and 62 random bits.

    Time-ordered ids go in at the right edge of every index that holds them. Random (v4)
    ids land on random pages, and once a table outgrew the page cache each insert read
    several: a send batch cost twice as much in SQLite after 70,000 messages as after
    10,000. The id shows its creation time, which `created_at` shows anyway; no id is a
    secret (tokens and keys come from `secrets`).

    Within a process the time field never repeats or goes back (the RFC's monotonic
    counter): a coarse clock, or one set back, still gives ids in the order they were made."""
    global _last_stamp
    milliseconds, rest = divmod(time.time_ns(), 1_000_000)
    stamp = max((milliseconds << 12) | (rest * 4096 // 1_000_000), _last_stamp + 1)
    _last_stamp = stamp
    random_bits = int.from_bytes(os.urandom(8)) & _RANDOM_62_BITS
    # The version sits between the milliseconds and their fraction.
    time_bits = ((stamp >> 12) << 80) | ((stamp & 0xFFF) << 64)
    return uuid.UUID(int=time_bits | _UUID7_VERSION_AND_VARIANT | random_bits)


def dialect_insert(session: AsyncSession) -> Any:
    """The session's dialect `insert` (PostgreSQL's or SQLite's), for ON CONFLICT clauses."""
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    return (postgresql if dialect == "postgresql" else sqlite).insert
