"""Creating a workspace (a saga over identity and messaging) and #general following membership."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.support.helpers import eventually
from tests.support.messaging import (
    add_members,
    conversation_stream,
    create_channel,
    general,
    history,
    mine,
    open_dm,
    outbox_drained,
    problem,
    stream_events,
)
from tests.support.users import create_workspace, register
from tidings.db.base import Base
from tidings.identity.models import Membership, Workspace
from tidings.messaging.models import Conversation, ConversationMember, Message

LEFTOVERS: list[type[Base]] = [Workspace, Membership, Conversation, ConversationMember, Message]


async def row_counts(app: FastAPI) -> dict[str, int]:
    """Rows of the tables a workspace creation writes (each test has a database of its own)."""
    async with app.state.runtime.db.read() as session:
        return {
            table.__tablename__: int(
                await session.scalar(select(func.count()).select_from(table)) or 0
            )
            for table in LEFTOVERS
        }


async def test_a_new_workspace_has_general_with_its_creator_and_a_welcome(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await register(client)
    created = await client.post(
        "/api/v1/workspaces", json={"name": "Zanzibar Traders"}, headers=owner.headers
    )
    assert created.status_code == 201, created.text
    assert created.json()["role"] == "owner"
    ws = created.json()["id"]

    lobby = await general(client, owner, ws)
    assert {
        k: lobby[k]
        for k in ("name", "kind", "is_default", "created_by", "member_count", "is_member")
    } == {
        "name": "general",
        "kind": "public",
        "is_default": True,
        "created_by": owner.id,
        "member_count": 1,
        "is_member": True,
    }
    [welcome] = (await history(client, owner.headers, lobby["id"]))["messages"]
    assert (
        welcome["seq"],
        welcome["sender_kind"],
        welcome["sender_id"],
        welcome["sender_name"],
    ) == (
        1,
        "system",
        None,
        "Tidings",
    )
    assert "Zanzibar Traders" in welcome["body"]
    browse = await client.get(
        f"/api/v1/workspaces/{ws}/conversations", params={"browse": "true"}, headers=owner.headers
    )
    assert [c["name"] for c in browse.json()] == ["general"]

    # Whoever adds the creator first (the saga or the membership consumer), it happens once.
    await eventually(lambda: outbox_drained(app))
    stream = await stream_events(app, conversation_stream(lobby["id"]))
    assert [e.type for e in stream] == [
        "conversation.created",
        "conversation.member_joined",
        "message.created",
    ]
    assert stream[1].payload["user_ids"] == [owner.id]
    assert await row_counts(app) == {
        "workspaces": 1,
        "memberships": 1,
        "conversations": 1,
        "conversation_members": 1,
        "messages": 1,
    }


def _target(app: FastAPI, method: str) -> Any:
    runtime = app.state.runtime
    return {
        "create_record": runtime.identity.workspaces,
        "create_default": runtime.messaging.conversations,
        "add_owner": runtime.identity.workspaces,
        "post_system": runtime.messaging.messages,
    }[method]


# Each step's service method fails before doing anything, or (`after`) once its work committed:
# either way, nothing may be left behind.
FAILURES = [
    ("create_record", False),
    ("create_record", True),
    ("create_default", False),
    ("create_default", True),
    ("add_owner", False),
    ("add_owner", True),
    ("post_system", False),
    ("post_system", True),
]


async def test_a_failed_step_is_compensated(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await register(client)
    nothing = dict.fromkeys(
        ["workspaces", "memberships", "conversations", "conversation_members", "messages"], 0
    )
    for method, after in FAILURES:
        failure = f"{method}{' after its commit' if after else ''}"
        target = _target(app, method)
        original: Callable[..., Awaitable[Any]] = getattr(target, method)

        async def failing(
            *args: Any, _original: Any = original, _after: bool = after, **kwargs: Any
        ) -> Any:
            if _after:
                await _original(*args, **kwargs)
            raise RuntimeError("injected failure")

        with monkeypatch.context() as patch:
            patch.setattr(target, method, failing)
            response = await client.post(
                "/api/v1/workspaces", json={"name": "Doomed"}, headers=owner.headers
            )
        body = problem(response, 500, "internal_error")
        assert "injected" not in response.text, failure
        assert body["request_id"], failure

        # Let the outbox consumers (#general membership) run, then look: nothing remains.
        await eventually(lambda: outbox_drained(app))
        assert await row_counts(app) == nothing, failure
        assert (await client.get("/api/v1/workspaces", headers=owner.headers)).json() == [], failure

    # And the next attempt works as if the failed ones never happened.
    ws = await create_workspace(client, owner, "Doomed")
    assert [
        w["id"] for w in (await client.get("/api/v1/workspaces", headers=owner.headers)).json()
    ] == [ws]
    assert (await general(client, owner, ws))["member_count"] == 1


async def _members_of(app: FastAPI, conversation_ids: list[str]) -> set[tuple[str, str]]:
    async with app.state.runtime.db.read() as session:
        rows = await session.execute(
            select(ConversationMember.conversation_id, ConversationMember.user_id).where(
                ConversationMember.conversation_id.in_([uuid.UUID(c) for c in conversation_ids])
            )
        )
    return {(str(c), str(u)) for c, u in rows.all()}


async def test_general_follows_workspace_membership(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    bob, guest = await add_members(client, owner, ws, "member", "guest")
    lobby = (await general(client, owner, ws))["id"]

    # Accepting an invitation puts you in #general, through the outbox consumer.
    async def in_general(account_id: str) -> bool:
        return (lobby, account_id) in await _members_of(app, [lobby])

    await eventually(lambda: in_general(bob.id))
    await eventually(lambda: in_general(guest.id))
    mine_now = (await mine(client, bob, ws))[lobby]
    assert (mine_now["is_member"], mine_now["unread_count"]) == (True, 0)  # history, not unread
    assert lobby in await mine(client, guest, ws)  # guests too
    joined = [
        e
        for e in await stream_events(app, conversation_stream(lobby))
        if e.type == "conversation.member_joined"
    ]
    assert [(e.payload["user_ids"], e.payload["by"]) for e in joined[1:]] in (
        [([bob.id], bob.id), ([guest.id], guest.id)],
        [([guest.id], guest.id), ([bob.id], bob.id)],
    )

    # Removed from the workspace: out of its conversations, at once for access, then for good.
    channel = (await create_channel(client, owner.headers, ws, members=[bob]))["id"]
    private = (await create_channel(client, owner.headers, ws, private=True, members=[bob]))["id"]
    dm = (await open_dm(client, owner, ws, bob)).json()["id"]
    mark = {
        c: len(await stream_events(app, conversation_stream(c)))
        for c in (lobby, channel, private, dm)
    }
    assert (
        await client.delete(f"/api/v1/workspaces/{ws}/members/{bob.id}", headers=owner.headers)
    ).status_code == 204
    problem(
        await client.get(f"/api/v1/conversations/{channel}", headers=bob.headers),
        404,
        "conversation_not_found",
    )
    problem(
        await client.get(f"/api/v1/workspaces/{ws}/conversations", headers=bob.headers),
        404,
        "workspace_not_found",
    )

    async def bob_gone() -> bool:
        return not {
            m for m in await _members_of(app, [lobby, channel, private, dm]) if m[1] == bob.id
        }

    await eventually(bob_gone)
    for conversation, seen in mark.items():
        [left] = (await stream_events(app, conversation_stream(conversation)))[seen:]
        assert (left.type, left.payload["user_ids"], left.payload["left"]) == (
            "conversation.member_left",
            [bob.id],
            False,
        )

    # Leaving by oneself works the same way.
    assert (
        await client.post(f"/api/v1/workspaces/{ws}/leave", headers=guest.headers)
    ).status_code == 204
    await eventually(lambda: _not(in_general(guest.id)))

    # Back in the workspace: back in #general, not in what was left behind.
    invited = await client.post(
        f"/api/v1/workspaces/{ws}/invitations", json={"role": "member"}, headers=owner.headers
    )
    accepted = await client.post(
        "/api/v1/invitations/accept", json={"token": invited.json()["token"]}, headers=bob.headers
    )
    assert accepted.status_code == 200, accepted.text
    await eventually(lambda: in_general(bob.id))
    assert set(await mine(client, bob, ws)) == {lobby}


async def _not(value: Awaitable[bool]) -> bool:
    return not await value
