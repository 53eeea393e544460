"""G2: per-conversation total order under concurrent senders.

Hypothesis draws waves of sends (who, where, top level or thread reply, and now and then the
same send twice, as a client retrying). Each wave goes out at once (`asyncio.gather`) from
several accounts and an API key into several conversations; on the scaled profile through two
servers (two runtimes on one PostgreSQL), so senders really race for the conversation's row. After every wave, for every
conversation: the message sequences are exactly 1..n (no gap, no duplicate), `last_seq` is n,
and the conversation's outbox stream has gap-free `stream_seq` whose order is the order of the
messages (one `message.created` per message, in sequence order: commit order).
"""

from __future__ import annotations

import asyncio
import importlib
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from tests.support.helpers import eventually
from tests.support.messaging import (
    Headers,
    add_members,
    conversation_stream,
    create_channel,
    general,
    mine,
    post_message,
    send,
    stream_events,
)
from tests.support.users import Account, create_api_key, create_workspace, register
from tidings.app import create_app
from tidings.messaging.models import Conversation, Message
from tidings.settings import Settings


@dataclass
class World:
    senders: list[Headers]
    conversations: list[str]
    roots: list[str]  # a thread root per conversation
    servers: list[httpx.AsyncClient]


@pytest.fixture
async def servers(
    profile: str, settings: Settings, client: httpx.AsyncClient
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """The test's server, and when scaled a second one on the same database and Redis."""
    if profile != "scaled":
        yield [client]
        return
    second = create_app(settings)
    async with LifespanManager(second, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://two.test") as other:
            yield [client, other]


@pytest.fixture
async def world(client: httpx.AsyncClient, servers: list[httpx.AsyncClient]) -> World:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    bob, carol = await add_members(client, owner, ws, "member", "guest")
    key = {"Authorization": f"Bearer {await create_api_key(client, owner, ws, ['messages:send'])}"}
    people = [owner, bob, carol]
    public = await create_channel(client, owner.headers, ws, members=[bob, carol])
    private = await create_channel(client, bob.headers, ws, private=True, members=[owner, carol])
    lobby = await general(client, owner, ws)
    conversations = [lobby["id"], public["id"], private["id"]]
    for account in (bob, carol):  # the outbox consumer puts new members in #general
        await eventually(lambda account=account: in_conversation(client, account, ws, lobby["id"]))
    roots = [(await send(client, owner.headers, c, "thread root"))["id"] for c in conversations]
    return World([p.headers for p in people] + [key], conversations, roots, servers)


async def in_conversation(
    client: httpx.AsyncClient, account: Account, workspace_id: str, conversation_id: str
) -> bool:
    return conversation_id in await mine(client, account, workspace_id)


_waves = itertools.count()
Send = tuple[int, int, bool, bool]  # sender, conversation, as a reply, sent twice
sends = st.lists(
    st.tuples(
        st.integers(0, 3), st.integers(0, 2), st.booleans(), st.sampled_from([False] * 4 + [True])
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(wave=sends)
async def test_concurrent_senders_get_gap_free_sequences_in_commit_order(
    client: httpx.AsyncClient, app: FastAPI, world: World, wave: list[Send]
) -> None:
    number = next(_waves)
    requests = []
    for i, (sender, where, reply, twice) in enumerate(wave):
        extra: dict[str, str] = {"client_id": f"w{number}-{i}"}
        if reply:
            extra["thread_root_id"] = world.roots[where]
        for attempt in range(2 if twice else 1):
            server = world.servers[(i + attempt) % len(world.servers)]
            requests.append(
                post_message(
                    server, world.senders[sender], world.conversations[where], f"s{i}", **extra
                )
            )
    responses = await asyncio.gather(*requests)
    assert {r.status_code for r in responses} <= {200, 201}, [r.text for r in responses]
    created = [r.json()["id"] for r in responses if r.status_code == 201]
    assert len(created) == len(set(created)) == len(wave)  # a retried send made no second message
    assert {r.json()["id"] for r in responses} == set(created)

    for conversation in world.conversations:
        await check_order(app, conversation)


async def check_order(app: FastAPI, conversation_id: str) -> None:
    async with app.state.runtime.db.read() as session:
        seqs = list(
            await session.scalars(
                select(Message.seq)
                .where(Message.conversation_id == uuid.UUID(conversation_id))
                .order_by(Message.seq)
            )
        )
        last_seq = await session.scalar(
            select(Conversation.last_seq).where(Conversation.id == uuid.UUID(conversation_id))
        )
    assert seqs == list(range(1, len(seqs) + 1)), "gap or duplicate in message sequences"
    assert last_seq == len(seqs)

    stream = await stream_events(app, conversation_stream(conversation_id))
    assert [e.stream_seq for e in stream] == list(range(1, len(stream) + 1))
    announced = [e.payload["message"]["seq"] for e in stream if e.type == "message.created"]
    assert announced == seqs, "message.created events out of sequence (commit) order"


# Each change holds its row (the message, or the leaver's membership) and is paused just before
# it writes its event on the conversation's stream: the moment a batch of sends holding that
# stream would need the same row.
CHANGES = {
    "edit": ("message.edited", "PATCH", "/messages/{root}", {"body": "edited"}),
    "pin": ("message.pinned", "PUT", "/messages/{root}/pin", None),
    "delete": ("message.deleted", "DELETE", "/messages/{root}", None),
    "remove": ("conversation.member_left", "DELETE", "/members/{bob}", None),
}


@pytest.mark.profiles("scaled")  # the embedded profile has one writer: no cycle is possible
async def test_changes_racing_a_batch_of_sends_do_not_deadlock(
    client: httpx.AsyncClient, app: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    [bob] = await add_members(client, owner, ws, "member")
    blocker = (await create_channel(client, owner.headers, ws))["id"]
    # One conversation per change, each with a thread root.
    rooms = {
        change: (await create_channel(client, owner.headers, ws, members=[bob]))["id"]
        for change in CHANGES
    }
    roots = {
        change: (await send(client, owner.headers, room, "root"))["id"]
        for change, room in rooms.items()
    }
    paused = {paused_type for paused_type, *_ in CHANGES.values()}

    def pausing(real: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def emit(session: Any, type: str, **kwargs: Any) -> Any:
            if type in paused:
                await asyncio.sleep(1.0)
            return await real(session, type, **kwargs)

        return emit

    for module in ("tidings.messaging.messages", "tidings.messaging.conversations"):
        monkeypatch.setattr(f"{module}.emit", pausing(importlib.import_module(module).emit))

    # Hold the message writer on another conversation so that the sends below queue up and go
    # out together in one batch (one transaction).
    async with app.state.runtime.db.write_engine.connect() as holder:
        await holder.execute(
            text("SELECT id FROM conversations WHERE id = :id FOR UPDATE"), {"id": blocker}
        )
        held = asyncio.create_task(post_message(client, owner.headers, blocker, "held"))
        await asyncio.sleep(0.3)
        changing = {}
        for change, (_, method, path, body) in CHANGES.items():
            url = f"/api/v1/conversations/{rooms[change]}{path.format(root=roots[change], bob=bob.id)}"
            changing[change] = asyncio.create_task(
                client.request(method, url, json=body, headers=owner.headers)
            )
        await asyncio.sleep(0.3)
        firsts = [
            asyncio.create_task(post_message(client, owner.headers, room, "top level"))
            for room in rooms.values()
        ]
        await asyncio.sleep(0.1)  # queued first: their events take the streams for the batch
        # A reply updates the root's row; bob's own send updates bob's membership row.
        seconds = [
            asyncio.create_task(
                post_message(client, bob.headers, room, "bob's turn")
                if change == "remove"
                else post_message(
                    client, owner.headers, room, "a reply", thread_root_id=roots[change]
                )
            )
            for change, room in rooms.items()
        ]
        await asyncio.sleep(0.3)
        await holder.rollback()
    responses = await asyncio.gather(held, *firsts, *seconds)
    assert all(r.status_code < 500 for r in responses), [r.text for r in responses]
    for change, task in changing.items():
        response = await task
        assert response.status_code in (200, 204), (change, response.text)
    for room in rooms.values():
        await check_order(app, room)
