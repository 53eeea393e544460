"""G1: a send is idempotent per (conversation, sender, client_id).

The matrix after Zulip's `test_idempotent_request.py`: a replay answers 200 with the first
message; the same client_id with other content is refused; a send that failed (validation
before or after the work began, a server error) did not use up its client_id; concurrent sends
with one client_id make exactly one message; client_ids of different senders never collide.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from tests.support.messaging import (
    add_members,
    conversation_stream,
    create_channel,
    post_message,
    problem,
    send,
    stream_events,
)
from tests.support.users import create_api_key, create_workspace, register
from tidings.messaging.models import Conversation, Message

C = "/api/v1/conversations"


async def stored(app: FastAPI, conversation_id: str) -> tuple[list[tuple[int, str | None]], int]:
    """(seq, client_id) of every message of a conversation, and its last_seq."""
    async with app.state.runtime.db.read() as session:
        rows = await session.execute(
            select(Message.seq, Message.client_id)
            .where(Message.conversation_id == uuid.UUID(conversation_id))
            .order_by(Message.seq)
        )
        last_seq = await session.scalar(
            select(Conversation.last_seq).where(Conversation.id == uuid.UUID(conversation_id))
        )
    return [(seq, client_id) for seq, client_id in rows.all()], int(last_seq or 0)


async def created_events(app: FastAPI, conversation_id: str) -> list[dict[str, Any]]:
    return [
        e.payload["message"]
        for e in await stream_events(app, conversation_stream(conversation_id))
        if e.type == "message.created"
    ]


async def test_replay_answers_the_first_message(client: httpx.AsyncClient, app: FastAPI) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    room = (await create_channel(client, owner.headers, ws))["id"]

    first = await post_message(client, owner.headers, room, "hello", client_id="c-1")
    assert first.status_code == 201
    again = await post_message(client, owner.headers, room, "hello", client_id="c-1")
    assert again.status_code == 200
    assert again.json() == first.json()
    assert await stored(app, room) == ([(1, "c-1")], 1)
    assert [m["id"] for m in await created_events(app, room)] == [first.json()["id"]]

    # The same id with other content is a client bug: refused, and nothing is written.
    problem(
        await post_message(client, owner.headers, room, "hullo", client_id="c-1"),
        409,
        "client_id_reused",
    )
    problem(
        await post_message(
            client, owner.headers, room, "hello", client_id="c-1", thread_root_id=first.json()["id"]
        ),
        409,
        "client_id_reused",
    )
    # A replay after an edit answers the message as it is now (still one message).
    url = f"{C}/{room}/messages/{first.json()['id']}"
    assert (
        await client.patch(url, json={"body": "hello, edited"}, headers=owner.headers)
    ).status_code == 200
    after_edit = await post_message(client, owner.headers, room, "hello", client_id="c-1")
    assert (after_edit.status_code, after_edit.json()["body"]) == (200, "hello, edited")
    # Replays and refusals took no sequence.
    assert (await send(client, owner.headers, room, "next", client_id="c-2"))["seq"] == 2
    assert await stored(app, room) == ([(1, "c-1"), (2, "c-2")], 2)


async def test_a_failed_send_does_not_use_up_its_client_id(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    room = (await create_channel(client, owner.headers, ws))["id"]

    # Refused before any work (validation) and after it began (no such thread; archived).
    problem(
        await post_message(client, owner.headers, room, "   ", client_id="a"), 400, "empty_message"
    )
    assert (await send(client, owner.headers, room, "now real", client_id="a"))["seq"] == 1
    problem(
        await post_message(
            client, owner.headers, room, "reply", client_id="b", thread_root_id=str(uuid.uuid4())
        ),
        404,
        "thread_not_found",
    )
    assert (await send(client, owner.headers, room, "reply", client_id="b"))["seq"] == 2
    await client.post(f"{C}/{room}/archive", headers=owner.headers)
    problem(
        await post_message(client, owner.headers, room, "later", client_id="c"),
        409,
        "conversation_archived",
    )
    await client.post(f"{C}/{room}/unarchive", headers=owner.headers)
    assert (await send(client, owner.headers, room, "later", client_id="c"))["seq"] == 3

    # A server error after the row was written but before COMMIT: nothing stays, retry works.
    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("the outbox is on fire")

    # Both ways a send writes its event: in a batch, and one by one when a batch is retried.
    monkeypatch.setattr("tidings.messaging.messages.emit", broken)
    monkeypatch.setattr("tidings.messaging.messages.emit_many", broken)
    failed = await post_message(client, owner.headers, room, "survives", client_id="d")
    problem(failed, 500, "internal_error")
    assert "on fire" not in failed.text
    monkeypatch.undo()
    assert (await send(client, owner.headers, room, "survives", client_id="d"))["seq"] == 4
    assert await stored(app, room) == ([(1, "a"), (2, "b"), (3, "c"), (4, "d")], 4)


async def test_concurrent_sends_with_one_client_id_make_one_message(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    room = (await create_channel(client, owner.headers, ws))["id"]

    burst = await asyncio.gather(
        *(post_message(client, owner.headers, room, "once", client_id="burst") for _ in range(8))
    )
    assert sorted(r.status_code for r in burst) == [200] * 7 + [201], [r.text for r in burst]
    assert len({r.json()["id"] for r in burst}) == 1
    assert {r.json()["seq"] for r in burst} == {1}
    assert await stored(app, room) == ([(1, "burst")], 1)
    assert len(await created_events(app, room)) == 1

    # Racing different contents under one id: one wins, the others are told it is taken.
    race = await asyncio.gather(
        *(
            post_message(client, owner.headers, room, f"take {i}", client_id="race")
            for i in range(4)
        )
    )
    assert sorted(r.status_code for r in race) == [201, 409, 409, 409], [r.text for r in race]
    for response in race:
        if response.status_code == 409:
            problem(response, 409, "client_id_reused")
    assert await stored(app, room) == ([(1, "burst"), (2, "race")], 2)


async def test_client_ids_are_scoped_per_sender(client: httpx.AsyncClient, app: FastAPI) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    [bob] = await add_members(client, owner, ws, "member")
    key = {"Authorization": f"Bearer {await create_api_key(client, owner, ws, ['messages:send'])}"}
    room = (await create_channel(client, owner.headers, ws, members=[bob]))["id"]
    other = (await create_channel(client, owner.headers, ws))["id"]

    mine = await send(client, owner.headers, room, "from owner", client_id="same")
    bobs = await send(client, bob.headers, room, "from bob", client_id="same")
    apps = await send(client, key, room, "from the app", client_id="same")
    assert [m["seq"] for m in (mine, bobs, apps)] == [1, 2, 3]
    assert [m["sender_id"] for m in (mine, bobs)] == [owner.id, bob.id]
    replay = await post_message(client, bob.headers, room, "from bob", client_id="same")
    assert (replay.status_code, replay.json()["id"]) == (200, bobs["id"])
    # And per conversation: the same sender's id in another conversation is another message.
    elsewhere = await send(client, owner.headers, other, "from owner", client_id="same")
    assert (elsewhere["seq"], elsewhere["id"] != mine["id"]) == (1, True)
    assert await stored(app, room) == ([(1, "same"), (2, "same"), (3, "same")], 3)
