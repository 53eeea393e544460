"""The audit log: filled from the outbox, read by workspace admins, exported by instance admins."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.audit.models import AuditEntry
from tidings.db.base import dialect_insert
from tidings.db.database import Database
from tidings.events.dispatcher import DispatchedEvent
from tidings.http.cursors import decode_cursor, encode_cursor

MAX_PAGE = 200
EXPORT_CHUNK = 500


class AuditConsumer:
    """Transactional outbox consumer: one row per audited event, even if redelivered."""

    name = "audit"

    def wants(self, event: DispatchedEvent) -> bool:
        return "audit" in event.payload

    async def handle(self, session: AsyncSession, events: Sequence[DispatchedEvent]) -> None:
        rows = [_row(event) for event in events if "audit" in event.payload]
        if not rows:
            return
        await session.execute(
            dialect_insert(session)(AuditEntry)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[AuditEntry.event_id])
        )


def _row(event: DispatchedEvent) -> dict[str, Any]:
    block: dict[str, Any] = event.payload["audit"]
    return {
        "id": uuid.uuid4(),
        "event_id": event.id,
        "workspace_id": event.workspace_id,
        "action": str(block["action"])[:64],
        "actor_type": str(block.get("actor_type") or "system")[:16],
        "actor_id": block.get("actor_id"),
        "target_type": block.get("target_type"),
        "target_id": block.get("target_id"),
        "ip": block.get("ip"),
        "details": block.get("details") or {},
        "occurred_at": event.occurred_at,
    }


@dataclass(frozen=True)
class AuditFilter:
    actions: Sequence[str] = ()
    actor_id: str | None = None
    target_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def entry_dict(entry: AuditEntry) -> dict[str, Any]:
    return {
        "id": str(entry.id),
        "event_id": str(entry.event_id),
        "workspace_id": str(entry.workspace_id) if entry.workspace_id else None,
        "action": entry.action,
        "actor_type": entry.actor_type,
        "actor_id": entry.actor_id,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "ip": entry.ip,
        "details": entry.details,
        "occurred_at": entry.occurred_at.isoformat(),
    }


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(
        self,
        workspace_id: uuid.UUID,
        filters: AuditFilter,
        *,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[AuditEntry], str | None]:
        """Newest first; `cursor` continues after the last entry of the previous page."""
        query = self._filtered(filters).where(AuditEntry.workspace_id == workspace_id)
        if cursor:
            moment, entry_id = decode_cursor(cursor)
            query = query.where(
                or_(
                    AuditEntry.occurred_at < moment,
                    and_(AuditEntry.occurred_at == moment, AuditEntry.id < entry_id),
                )
            )
        limit = max(1, min(limit, MAX_PAGE))
        async with self._db.read() as session:
            rows = list(
                await session.scalars(
                    query.order_by(AuditEntry.occurred_at.desc(), AuditEntry.id.desc()).limit(
                        limit + 1
                    )
                )
            )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].occurred_at, rows[-1].id) if more and rows else None
        return rows, next_cursor

    async def export(self, filters: AuditFilter) -> AsyncIterator[bytes]:
        """Every matching entry, oldest first, as JSON lines, streamed in chunks."""
        after: tuple[datetime, uuid.UUID] | None = None
        while True:
            query = self._filtered(filters)
            if after is not None:
                query = query.where(
                    or_(
                        AuditEntry.occurred_at > after[0],
                        and_(AuditEntry.occurred_at == after[0], AuditEntry.id > after[1]),
                    )
                )
            async with self._db.read() as session:
                rows = list(
                    await session.scalars(
                        query.order_by(AuditEntry.occurred_at, AuditEntry.id).limit(EXPORT_CHUNK)
                    )
                )
            if not rows:
                return
            yield b"".join(orjson.dumps(entry_dict(row)) + b"\n" for row in rows)
            after = (rows[-1].occurred_at, rows[-1].id)

    @staticmethod
    def _filtered(filters: AuditFilter) -> Any:
        query = select(AuditEntry)
        if filters.actions:
            query = query.where(AuditEntry.action.in_(list(filters.actions)))
        if filters.actor_id:
            query = query.where(AuditEntry.actor_id == filters.actor_id)
        if filters.target_id:
            query = query.where(AuditEntry.target_id == filters.target_id)
        if filters.since:
            query = query.where(AuditEntry.occurred_at >= filters.since)
        if filters.until:
            query = query.where(AuditEntry.occurred_at < filters.until)
        return query
