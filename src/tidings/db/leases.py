"""Named leases in the database: how one process of a cluster becomes the leader of a task."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import String, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db.base import Base, utcnow
from tidings.db.database import Database


class Lease(Base):
    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    holder: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime]


async def acquire_lease(db: Database, name: str, holder: str, ttl_seconds: float) -> bool:
    """Take or renew `name` for `holder`; True while `holder` is the leader.

    One compare-and-set UPDATE: it succeeds when the lease is ours or has expired.
    """
    now = utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    async with db.transaction() as session:
        result = await session.execute(
            update(Lease)
            .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
            .values(holder=holder, expires_at=expires)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            return True
    try:
        async with db.transaction() as session:
            session.add(Lease(name=name, holder=holder, expires_at=expires))
    except IntegrityError:
        return False  # someone else holds it
    return True


async def release_lease(db: Database, name: str, holder: str) -> None:
    async with db.transaction() as session:
        await session.execute(
            update(Lease)
            .where(Lease.name == name, Lease.holder == holder)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
