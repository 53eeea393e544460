"""Connect tickets: a browser cannot set an Authorization header on a WebSocket or an
EventSource, and an access token in a URL ends up in logs. Instead it asks for a ticket (an
authenticated POST), then connects with `?ticket=…` within 30 seconds. A ticket works once.

Embedded: held in this process. Scaled: in Redis (GETDEL), so any process can redeem it.
"""

from __future__ import annotations

import time
import uuid
from typing import Protocol

import orjson
import redis.asyncio as aioredis

from tidings.identity.tokens import digest, new_secret

TICKET_PREFIX = "tdt_"
TICKET_SECONDS = 30


class TicketStore(Protocol):
    async def issue(self, user_id: uuid.UUID, session_id: uuid.UUID | None) -> str: ...

    async def redeem(self, ticket: str) -> tuple[uuid.UUID, uuid.UUID | None] | None: ...


def _encode(user_id: uuid.UUID, session_id: uuid.UUID | None) -> bytes:
    return orjson.dumps([str(user_id), str(session_id) if session_id else None])


def _decode(raw: bytes) -> tuple[uuid.UUID, uuid.UUID | None]:
    user_id, session_id = orjson.loads(raw)
    return uuid.UUID(user_id), uuid.UUID(session_id) if session_id else None


class InProcessTickets:
    def __init__(self) -> None:
        self._tickets: dict[str, tuple[float, bytes]] = {}

    async def issue(self, user_id: uuid.UUID, session_id: uuid.UUID | None) -> str:
        now = time.monotonic()
        # Expired tickets are dropped as new ones are issued: the dict stays small.
        for key in [k for k, (expires, _) in self._tickets.items() if expires < now]:
            del self._tickets[key]
        ticket = new_secret(TICKET_PREFIX)
        self._tickets[digest(ticket)] = (now + TICKET_SECONDS, _encode(user_id, session_id))
        return ticket

    async def redeem(self, ticket: str) -> tuple[uuid.UUID, uuid.UUID | None] | None:
        entry = self._tickets.pop(digest(ticket), None)
        if entry is None or entry[0] < time.monotonic():
            return None
        return _decode(entry[1])


class RedisTickets:
    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    async def issue(self, user_id: uuid.UUID, session_id: uuid.UUID | None) -> str:
        ticket = new_secret(TICKET_PREFIX)
        await self._client.set(
            self._prefix + digest(ticket), _encode(user_id, session_id), ex=TICKET_SECONDS
        )
        return ticket

    async def redeem(self, ticket: str) -> tuple[uuid.UUID, uuid.UUID | None] | None:
        raw = await self._client.getdel(self._prefix + digest(ticket))
        return _decode(raw) if raw is not None else None
