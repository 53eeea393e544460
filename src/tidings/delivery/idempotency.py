"""`Idempotency-Key` (G1): the first answer to a key is the answer to every repeat for 24 h.

The record is written in the same transaction as the work it answers for, so a key either
names committed work with its answer or nothing at all. Two concurrent first requests with one
key meet at the primary key: the loser's transaction fails, and its retry finds the winner's
answer. The same key with another body is a client bug and answers 409.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import orjson
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import utcnow
from tidings.delivery.models import IdempotencyRecord
from tidings.http.problems import Conflict, Problem

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class IdempotencyKey:
    scope: str
    key: str
    request_hash: str


@dataclass(frozen=True)
class StoredAnswer:
    status_code: int
    body: Any


def idempotency_key(scope: str, key: str | None, request: BaseModel) -> IdempotencyKey | None:
    """The key of a request made with `Idempotency-Key: key`, bound to what the request asked
    (its body, as JSON): None without the header."""
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise Problem(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
            code="invalid_idempotency_key",
        )
    # Dumped only here: a batch without the header pays nothing for it.
    body = request.model_dump(mode="json")
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return IdempotencyKey(scope, key, digest)


async def claim(session: AsyncSession, key: IdempotencyKey) -> StoredAnswer | None:
    """The stored answer for `key`, or None after reserving it for this transaction."""
    now = utcnow()
    record = await session.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.scope == key.scope, IdempotencyRecord.key == key.key
        )
    )
    if record is not None and record.expires_at > now:
        if record.request_hash != key.request_hash:
            raise Conflict(
                "This Idempotency-Key was used with a different request.",
                code="idempotency_key_reused",
            )
        if record.status_code is not None:
            return StoredAnswer(record.status_code, record.response)
    if record is not None:
        await session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.scope == key.scope, IdempotencyRecord.key == key.key
            )
        )
    return None


def remember(
    session: AsyncSession, key: IdempotencyKey, status_code: int, body: Any, ttl_hours: float
) -> None:
    now = utcnow()
    session.add(
        IdempotencyRecord(
            scope=key.scope,
            key=key.key,
            request_hash=key.request_hash,
            status_code=status_code,
            response=body,
            created_at=now,
            expires_at=now + timedelta(hours=ttl_hours),
        )
    )


async def purge_expired(session: AsyncSession) -> int:
    result = await session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow())
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
