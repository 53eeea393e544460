"""Each mutation writes its events, in its transaction, on the right stream, in the documented shape.

After Zulip's `verify_action`: run one action, collect exactly the outbox rows it wrote, check
their types, streams and payloads. Conversation events go on `conversation:<id>`; what only
one person needs (read position, mute, thread follow) on that person's own stream. Payloads
carry the API shapes (`ConversationOut`, `MessageOut`): the event of a send or an edit is the
response itself. No-ops and refusals write nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import httpx
from fastapi import FastAPI

from tests.support.messaging import (
    add_members,
    conversation_stream,
    create_conversation,
    events_since,
    last_position,
    post_message,
    problem,
    stream_events,
    user_stream,
)
from tests.support.users import create_workspace, register
from tidings.events.models import Event
from tidings.messaging.schemas import ConversationOut, MessageOut

C = "/api/v1/conversations"


class Recorder:
    def __init__(self, app: FastAPI, workspace_id: str, *streams: str) -> None:
        self.app = app
        self.workspace_id = workspace_id
        self.streams = streams

    async def __call__(
        self, action: Awaitable[httpx.Response]
    ) -> tuple[httpx.Response, list[Event]]:
        """The response to `action` and the events it wrote on the watched streams."""
        mark = await last_position(self.app)
        response = await action
        assert response.status_code < 500, response.text
        written = await events_since(self.app, mark, *self.streams)
        for event in written:
            assert str(event.workspace_id) == self.workspace_id
        return response, written


def only(events: list[Event], type_: str, stream: str) -> dict[str, Any]:
    assert [(e.type, e.stream_key) for e in events] == [(type_, stream)], [
        (e.type, e.stream_key) for e in events
    ]
    payload: dict[str, Any] = events[0].payload
    return payload


async def test_each_mutation_writes_its_event(client: httpx.AsyncClient, app: FastAPI) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    [bob] = await add_members(client, owner, ws, "member")
    made = await create_conversation(
        client, owner.headers, ws, kind="public", name="events", member_ids=[bob.id]
    )
    cid = made.json()["id"]
    room, bobs = conversation_stream(cid), user_stream(bob.id)
    record = Recorder(app, ws, room, bobs, user_stream(owner.id))

    # Creation: the conversation and who is in it, as the first two events of its stream.
    created = await stream_events(app, room)
    assert [(e.type, e.stream_seq) for e in created] == [
        ("conversation.created", 1),
        ("conversation.member_joined", 2),
    ]
    assert ConversationOut.model_validate(created[0].payload["conversation"]).name == "events"
    assert created[1].payload == {
        "conversation_id": cid,
        "user_ids": sorted([owner.id, bob.id]),
        "by": owner.id,
    }

    # Changes to the conversation: the new state, what changed, who changed it.
    _, written = await record(
        client.patch(f"{C}/{cid}", json={"topic": "Plans"}, headers=bob.headers)
    )
    payload = only(written, "conversation.updated", room)
    assert (payload["changes"], payload["by"]) == ({"topic": {"from": "", "to": "Plans"}}, bob.id)
    assert ConversationOut.model_validate(payload["conversation"]).topic == "Plans"
    _, written = await record(
        client.patch(f"{C}/{cid}", json={"name": "events-2"}, headers=owner.headers)
    )
    assert only(written, "conversation.updated", room)["changes"] == {
        "name": {"from": "events", "to": "events-2"}
    }
    for path, archived in (("archive", True), ("unarchive", False)):
        _, written = await record(client.post(f"{C}/{cid}/{path}", headers=owner.headers))
        payload = only(written, "conversation.updated", room)
        assert payload["changes"] == {"archived": {"to": archived}}
        assert (payload["conversation"]["archived_at"] is not None) is archived
    for noop in (
        client.post(f"{C}/{cid}/unarchive", headers=owner.headers),
        client.patch(f"{C}/{cid}", json={"topic": " Plans "}, headers=bob.headers),
        client.patch(f"{C}/{cid}", json={"name": "denied"}, headers=bob.headers),  # 403
    ):
        assert (await record(noop))[1] == []

    # Membership.
    _, written = await record(client.post(f"{C}/{cid}/leave", headers=bob.headers))
    assert only(written, "conversation.member_left", room) == {
        "conversation_id": cid,
        "user_ids": [bob.id],
        "by": bob.id,
        "left": True,
    }
    _, written = await record(client.post(f"{C}/{cid}/join", headers=bob.headers))
    assert only(written, "conversation.member_joined", room) == {
        "conversation_id": cid,
        "user_ids": [bob.id],
        "by": bob.id,
    }
    assert (await record(client.post(f"{C}/{cid}/join", headers=bob.headers)))[1] == []
    _, written = await record(client.delete(f"{C}/{cid}/members/{bob.id}", headers=owner.headers))
    assert only(written, "conversation.member_left", room)["left"] is False
    _, written = await record(
        client.post(f"{C}/{cid}/members", json={"user_ids": [bob.id]}, headers=owner.headers)
    )
    assert only(written, "conversation.member_joined", room)["by"] == owner.id

    # Messages: the event carries exactly what the sender got back.
    sent, written = await record(post_message(client, bob.headers, cid, f"hi <@{owner.id}>"))
    assert only(written, "message.created", room) == {"message": sent.json()}
    MessageOut.model_validate(sent.json())
    root = sent.json()["id"]
    msg = f"{C}/{cid}/messages/{root}"
    reply, written = await record(
        post_message(client, owner.headers, cid, "reply", thread_root_id=root)
    )
    payload = only(written, "message.created", room)
    assert payload["message"] == reply.json()
    assert payload["thread"]["root_id"] == root
    assert payload["thread"]["reply_count"] == 1
    assert payload["thread"]["last_reply_at"]
    _, written = await record(
        post_message(client, bob.headers, cid, f"hi <@{owner.id}>", client_id="x")
    )
    assert len(written) == 1
    assert (
        await record(post_message(client, bob.headers, cid, f"hi <@{owner.id}>", client_id="x"))
    )[1] == []  # replay

    edited, written = await record(client.patch(msg, json={"body": "hi all"}, headers=bob.headers))
    assert only(written, "message.edited", room) == {"message": edited.json()}
    assert (await record(client.patch(msg, json={"body": "hi all"}, headers=bob.headers)))[1] == []
    assert (await record(client.patch(msg, json={"body": "hijack"}, headers=owner.headers)))[
        1
    ] == []  # 403

    reacted, written = await record(client.put(f"{msg}/reactions/tada", headers=owner.headers))
    assert only(written, "reaction.added", room) == {
        "message_id": root,
        "emoji": "tada",
        "user_id": owner.id,
        "reactions": reacted.json(),
    }
    assert (await record(client.put(f"{msg}/reactions/tada", headers=owner.headers)))[1] == []
    _, written = await record(client.delete(f"{msg}/reactions/tada", headers=owner.headers))
    assert only(written, "reaction.removed", room)["reactions"] == []
    assert (await record(client.delete(f"{msg}/reactions/tada", headers=owner.headers)))[1] == []

    pinned, written = await record(client.put(f"{msg}/pin", headers=bob.headers))
    assert only(written, "message.pinned", room) == {"message": pinned.json(), "by": bob.id}
    assert (await record(client.put(f"{msg}/pin", headers=bob.headers)))[1] == []
    _, written = await record(client.delete(f"{msg}/pin", headers=bob.headers))
    assert only(written, "message.unpinned", room)["message"]["pinned"] is False

    # Personal state goes on the person's own stream, never on the conversation's.
    # (bob's own sends moved his read position to 3; the owner's next message is 4.)
    assert (await post_message(client, owner.headers, cid, "news")).json()["seq"] == 4
    _, written = await record(client.post(f"{C}/{cid}/read", json={"seq": 4}, headers=bob.headers))
    assert only(written, "conversation.read", bobs) == {"conversation_id": cid, "last_read_seq": 4}
    assert (await record(client.post(f"{C}/{cid}/read", json={"seq": 1}, headers=bob.headers)))[
        1
    ] == []
    _, written = await record(
        client.put(f"{C}/{cid}/mute", json={"muted": True}, headers=bob.headers)
    )
    assert only(written, "conversation.muted", bobs) == {"conversation_id": cid, "muted": True}
    assert (await record(client.put(f"{C}/{cid}/mute", json={"muted": True}, headers=bob.headers)))[
        1
    ] == []
    _, written = await record(client.delete(f"{msg}/follow", headers=bob.headers))
    assert only(written, "thread.follow_updated", bobs) == {
        "conversation_id": cid,
        "root_id": root,
        "following": False,
    }
    assert (await record(client.delete(f"{msg}/follow", headers=bob.headers)))[1] == []
    _, written = await record(client.put(f"{msg}/follow", headers=bob.headers))
    assert only(written, "thread.follow_updated", bobs)["following"] is True

    # Deletion: a tombstone, once.
    _, written = await record(client.delete(msg, headers=bob.headers))
    payload = only(written, "message.deleted", room)
    assert (
        payload["message"]["id"],
        payload["message"]["deleted"],
        payload["message"]["body"],
    ) == (root, True, "")
    assert (await record(client.delete(msg, headers=bob.headers)))[1] == []

    # Refused: nothing written.
    await client.post(f"{C}/{cid}/archive", headers=owner.headers)
    refused, written = await record(post_message(client, bob.headers, cid, "too late"))
    problem(refused, 409, "conversation_archived")
    assert written == []

    # The conversation's stream has no gaps, and nothing personal leaked onto it.
    stream = await stream_events(app, room)
    assert [e.stream_seq for e in stream] == list(range(1, len(stream) + 1))
    assert not {"conversation.read", "conversation.muted", "thread.follow_updated"} & {
        e.type for e in stream
    }


async def test_direct_messages_announce_their_people(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    [bob] = await add_members(client, owner, ws, "member")
    opened = await create_conversation(
        client, owner.headers, ws, kind="direct", member_ids=[bob.id]
    )
    dm = opened.json()["id"]
    events = await stream_events(app, conversation_stream(dm))
    assert [e.type for e in events] == ["conversation.created", "conversation.member_joined"]
    assert events[0].payload["conversation"]["kind"] == "direct"
    assert events[1].payload["user_ids"] == sorted([owner.id, bob.id])
    mark = await last_position(app)
    again = await create_conversation(client, bob.headers, ws, kind="direct", member_ids=[owner.id])
    assert (again.status_code, again.json()["id"]) == (200, dm)
    assert await events_since(app, mark, conversation_stream(dm)) == []  # found, not created
