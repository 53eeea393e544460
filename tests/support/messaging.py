"""Conversations and messages through the real API, and the outbox rows they leave behind."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.support.users import Account, add_member
from tidings.events.models import Event
from tidings.messaging import events

Headers = dict[str, str]
_names = itertools.count(1)


def unique_name(prefix: str = "chan") -> str:
    return f"{prefix}-{next(_names)}"


def problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Assert `response` is an RFC 9457 problem with this status and stable code."""
    assert response.status_code == status, f"expected {status} {code}: {response.text}"
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    return body


async def add_members(
    client: httpx.AsyncClient, owner: Account, workspace_id: str, *roles: str
) -> list[Account]:
    """Several invited-and-accepted accounts at once (password hashing runs in parallel)."""
    return list(await asyncio.gather(*(add_member(client, owner, workspace_id, r) for r in roles)))


async def create_conversation(
    client: httpx.AsyncClient, headers: Headers, workspace_id: str, **body: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/workspaces/{workspace_id}/conversations", json=body, headers=headers
    )


async def create_channel(
    client: httpx.AsyncClient,
    headers: Headers,
    workspace_id: str,
    name: str | None = None,
    *,
    private: bool = False,
    members: tuple[Account, ...] | list[Account] = (),
) -> dict[str, Any]:
    response = await create_conversation(
        client,
        headers,
        workspace_id,
        kind="private" if private else "public",
        name=name or unique_name(),
        member_ids=[m.id for m in members],
    )
    assert response.status_code == 201, response.text
    conversation: dict[str, Any] = response.json()
    return conversation


async def open_dm(
    client: httpx.AsyncClient, account: Account, workspace_id: str, *others: Account
) -> httpx.Response:
    return await create_conversation(
        client,
        account.headers,
        workspace_id,
        kind="direct" if len(others) <= 1 else "group",
        member_ids=[o.id for o in others],
    )


async def send(
    client: httpx.AsyncClient,
    headers: Headers,
    conversation_id: str,
    body: str,
    **extra: Any,
) -> dict[str, Any]:
    response = await post_message(client, headers, conversation_id, body, **extra)
    assert response.status_code == 201, response.text
    message: dict[str, Any] = response.json()
    return message


async def post_message(
    client: httpx.AsyncClient, headers: Headers, conversation_id: str, body: str, **extra: Any
) -> httpx.Response:
    return await client.post(
        f"/api/v1/conversations/{conversation_id}/messages",
        json={"body": body, **extra},
        headers=headers,
    )


async def mine(
    client: httpx.AsyncClient, account: Account, workspace_id: str
) -> dict[str, dict[str, Any]]:
    """The caller's conversations by id (with unread and mention counts)."""
    response = await client.get(
        f"/api/v1/workspaces/{workspace_id}/conversations", headers=account.headers
    )
    assert response.status_code == 200, response.text
    return {c["id"]: c for c in response.json()}


async def general(client: httpx.AsyncClient, account: Account, workspace_id: str) -> dict[str, Any]:
    [conversation] = [
        c for c in (await mine(client, account, workspace_id)).values() if c["is_default"]
    ]
    return conversation


async def history(
    client: httpx.AsyncClient, headers: Headers, conversation_id: str, **params: Any
) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/conversations/{conversation_id}/messages", params=params, headers=headers
    )
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def conversation_stream(conversation_id: str) -> str:
    return events.conversation_stream(uuid.UUID(conversation_id))


def user_stream(user_id: str) -> str:
    """The stream of events only this person needs (read position, mutes, follows)."""
    return events.user_stream(uuid.UUID(user_id))


async def stream_events(app: FastAPI, stream_key: str) -> list[Event]:
    """The outbox rows of one stream in the order they were written."""
    async with app.state.runtime.db.read() as session:
        return list(
            await session.scalars(
                select(Event).where(Event.stream_key == stream_key).order_by(Event.position)
            )
        )


async def last_position(app: FastAPI) -> int:
    async with app.state.runtime.db.read() as session:
        return int(await session.scalar(select(func.coalesce(func.max(Event.position), 0))) or 0)


async def events_since(app: FastAPI, position: int, *streams: str) -> list[Event]:
    """Outbox rows written after `position` (on `streams`, if given), oldest first."""
    query = select(Event).where(Event.position > position).order_by(Event.position)
    if streams:
        query = query.where(Event.stream_key.in_(streams))
    async with app.state.runtime.db.read() as session:
        return list(await session.scalars(query))


async def outbox_drained(app: FastAPI) -> bool:
    async with app.state.runtime.db.read() as session:
        pending = await session.scalar(
            select(func.count()).select_from(Event).where(Event.dispatched_at.is_(None))
        )
    return pending == 0
