"""The event outbox: every committed change, in order per stream."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db.base import Base, BigIntPK, JSONDocument, new_id, utcnow


class Event(Base):
    """One outbox row, written in the same transaction as the change it describes."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("stream_key", "stream_seq", name="uq_events_stream_seq"),
        # Only undispatched rows are scanned by the dispatcher; the partial index stays small.
        Index(
            "ix_events_pending",
            "position",
            sqlite_where=text("dispatched_at IS NULL"),
            postgresql_where=text("dispatched_at IS NULL"),
        ),
        Index("ix_events_workspace_position", "workspace_id", "position"),
    )

    position: Mapped[int] = mapped_column(BigIntPK, primary_key=True, autoincrement=True)
    id: Mapped[uuid.UUID] = mapped_column(unique=True, default=new_id)
    type: Mapped[str] = mapped_column(String(100))
    workspace_id: Mapped[uuid.UUID | None]
    stream_key: Mapped[str] = mapped_column(String(200))
    stream_seq: Mapped[int] = mapped_column(BigInteger)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    occurred_at: Mapped[datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[datetime | None]


class EventStream(Base):
    """The last sequence handed out per stream; its row lock orders writers of one stream."""

    __tablename__ = "event_streams"

    stream_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)


class ProcessedEvent(Base):
    """Dedupe ledger for consumers that must act once per event despite redelivery."""

    __tablename__ = "processed_events"

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(default=utcnow)
