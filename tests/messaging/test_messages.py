"""Messages: send, limits, mentions, edits, tombstones, reactions, pins, threads and history."""

from __future__ import annotations

import uuid
from dataclasses import fields
from urllib.parse import quote

import httpx

from tests.support.messaging import (
    add_members,
    create_channel,
    history,
    mine,
    open_dm,
    post_message,
    problem,
    send,
)
from tests.support.users import create_api_key, create_workspace, register
from tidings.messaging.models import Message, WrittenMessage

C = "/api/v1/conversations"
NO_MENTIONS = {"users": [], "channel": False, "here": False}


def test_a_written_message_has_exactly_the_columns_of_a_message() -> None:
    """`WrittenMessage` mirrors `Message` so a send can skip the ORM: a column added to one
    must be added to the other."""
    assert [f.name for f in fields(WrittenMessage)] == list(Message.__table__.columns.keys())


async def test_send_shape_and_limits(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    room = (await create_channel(client, owner.headers, ws))["id"]

    sent = await send(client, owner.headers, room, "hello **world**")
    assert {k: sent[k] for k in ("seq", "sender_kind", "sender_id", "sender_name", "body")} == {
        "seq": 1,
        "sender_kind": "user",
        "sender_id": owner.id,
        "sender_name": owner.email.split("@")[0],
        "body": "hello **world**",
    }
    assert (sent["client_id"], sent["thread_root_id"], sent["edited_at"]) == (None, None, None)
    assert (sent["reply_count"], sent["deleted"], sent["pinned"], sent["reactions"]) == (
        0,
        False,
        False,
        [],
    )
    assert sent["mentions"] == NO_MENTIONS
    fetched = await client.get(f"{C}/{room}/messages/{sent['id']}", headers=owner.headers)
    assert fetched.json() == sent

    # 10,000 characters (not bytes) is the limit.
    assert (await send(client, owner.headers, room, "x" * 10_000))["seq"] == 2
    assert (await send(client, owner.headers, room, "😀" * 10_000))["seq"] == 3
    too_long = problem(
        await post_message(client, owner.headers, room, "x" * 10_001), 400, "validation_failed"
    )
    assert [(e["field"], e["type"]) for e in too_long["errors"]] == [
        ("body.body", "string_too_long")
    ]
    problem(await post_message(client, owner.headers, room, " \n\t "), 400, "empty_message")
    problem(await post_message(client, owner.headers, room, ""), 400, "validation_failed")
    for bad in (
        {},
        {"body": "x", "colour": "red"},
        {"body": "x", "client_id": ""},
        {"body": "x", "client_id": "c" * 101},
    ):
        response = await client.post(f"{C}/{room}/messages", json=bad, headers=owner.headers)
        problem(response, 400, "validation_failed")
    problem(
        await post_message(client, owner.headers, room, "reply", thread_root_id=str(uuid.uuid4())),
        404,
        "thread_not_found",
    )
    problem(
        await post_message(client, owner.headers, str(uuid.uuid4()), "hi"),
        404,
        "conversation_not_found",
    )
    # Refused sends take no sequence.
    assert (await send(client, owner.headers, room, "next"))["seq"] == 4

    key = {"Authorization": f"Bearer {await create_api_key(client, owner, ws, ['messages:send'])}"}
    [listed_key] = (
        await client.get(f"/api/v1/workspaces/{ws}/api-keys", headers=owner.headers)
    ).json()
    by_app = await send(client, key, room, "deployed v2")
    assert (by_app["sender_kind"], by_app["sender_id"], by_app["sender_name"]) == (
        "app",
        listed_key["id"],
        "ci",
    )


async def test_mentions_are_parsed_outside_code(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    [bob] = await add_members(client, owner, ws, "member")
    room = (await create_channel(client, owner.headers, ws, members=[bob]))["id"]
    stranger = str(uuid.uuid4())

    cases = {
        f"hi <@{bob.id}> and again <@{bob.id.upper()}>": {
            "users": [bob.id],
            "channel": False,
            "here": False,
        },
        f"`<@{bob.id}>` and ``<@{bob.id}>``": NO_MENTIONS,
        f"```\n<@{bob.id}> @channel\n```": NO_MENTIONS,
        "write to ops@channel.example or @here": {"users": [], "channel": False, "here": True},
        f"@everyone, <@{stranger}> too": {"users": [stranger], "channel": True, "here": False},
    }
    for body, expected in cases.items():
        assert (await send(client, owner.headers, room, body))["mentions"] == expected, body
    # Counted for members only: bob by id, then by @here and @everyone (the stranger is not).
    assert (await mine(client, bob, ws))[room]["mention_count"] == 3


async def test_edit_keeps_history_and_only_the_sender_edits(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    [bob] = await add_members(client, owner, ws, "member")
    room = (await create_channel(client, owner.headers, ws, members=[bob]))["id"]
    other = (await create_channel(client, owner.headers, ws))["id"]
    message = await send(client, owner.headers, room, "first")
    url = f"{C}/{room}/messages/{message['id']}"

    problem(
        await client.patch(url, json={"body": "bob was here"}, headers=bob.headers),
        403,
        "not_the_sender",
    )
    edited = await client.patch(url, json={"body": f"second, <@{bob.id}>"}, headers=owner.headers)
    assert edited.status_code == 200, edited.text
    assert edited.json()["body"] == f"second, <@{bob.id}>"
    assert edited.json()["edited_at"] is not None
    assert (edited.json()["seq"], edited.json()["id"]) == (message["seq"], message["id"])
    assert edited.json()["mentions"]["users"] == [bob.id]
    assert (await mine(client, bob, ws))[room]["mention_count"] == 1
    third = await client.patch(url, json={"body": "third"}, headers=owner.headers)
    assert third.json()["mentions"] == NO_MENTIONS
    assert (await mine(client, bob, ws))[room]["mention_count"] == 0
    same = await client.patch(url, json={"body": "third"}, headers=owner.headers)
    assert same.json()["edited_at"] == third.json()["edited_at"]  # nothing changed, nothing kept

    edits = await client.get(f"{url}/edits", headers=bob.headers)
    assert edits.status_code == 200
    assert [(e["previous_body"], e["edited_by"]) for e in edits.json()] == [
        ("first", owner.id),
        (f"second, <@{bob.id}>", owner.id),
    ]
    problem(
        await client.patch(url, json={"body": "  "}, headers=owner.headers), 400, "empty_message"
    )
    problem(
        await client.patch(url, json={"body": ""}, headers=owner.headers), 400, "validation_failed"
    )
    problem(
        await client.patch(url, json={"body": "x" * 10_001}, headers=owner.headers),
        400,
        "validation_failed",
    )
    # A message addressed through another conversation is not found.
    problem(
        await client.patch(
            f"{C}/{other}/messages/{message['id']}", json={"body": "x"}, headers=owner.headers
        ),
        404,
        "message_not_found",
    )
    problem(
        await client.get(f"{C}/{room}/messages/{uuid.uuid4()}/edits", headers=owner.headers),
        404,
        "message_not_found",
    )

    # An app edits what it sent, and only that.
    key = {"Authorization": f"Bearer {await create_api_key(client, owner, ws, ['messages:send'])}"}
    by_app = await send(client, key, room, "build started")
    app_url = f"{C}/{room}/messages/{by_app['id']}"
    assert (
        await client.patch(app_url, json={"body": "build passed"}, headers=key)
    ).status_code == 200
    problem(
        await client.patch(app_url, json={"body": "mine"}, headers=owner.headers),
        403,
        "not_the_sender",
    )
    problem(await client.patch(url, json={"body": "mine"}, headers=key), 403, "not_the_sender")

    assert (await client.delete(url, headers=owner.headers)).status_code == 204
    problem(
        await client.patch(url, json={"body": "undead"}, headers=owner.headers),
        409,
        "message_deleted",
    )


async def test_delete_leaves_a_tombstone_and_who_may_delete(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    admin, bob, carol = await add_members(client, owner, ws, "admin", "member", "member")
    # bob made the channel, but that does not make him a moderator of others' messages.
    room = (await create_channel(client, bob.headers, ws, members=[carol]))["id"]

    plan = await send(client, carol.headers, room, f"the secret plan, <@{bob.id}>")
    url = f"{C}/{room}/messages/{plan['id']}"
    await client.put(f"{url}/reactions/eyes", headers=bob.headers)
    await client.put(f"{url}/pin", headers=bob.headers)
    await client.patch(url, json={"body": "the secret plan v2"}, headers=carol.headers)
    reply = await send(client, bob.headers, room, "on it", thread_root_id=plan["id"])

    assert (await client.delete(url, headers=carol.headers)).status_code == 204
    tombstone = (await client.get(url, headers=bob.headers)).json()
    assert {
        k: tombstone[k] for k in ("body", "deleted", "pinned", "reactions", "mentions", "seq")
    } == {
        "body": "",
        "deleted": True,
        "pinned": False,
        "reactions": [],
        "mentions": {},
        "seq": plan["seq"],
    }
    page = await history(client, bob.headers, room)
    assert [(m["id"], m["deleted"], m["body"]) for m in page["messages"]] == [
        (plan["id"], True, "")
    ]
    assert (await client.get(f"{url}/edits", headers=bob.headers)).json() == []
    assert (await client.get(f"{C}/{room}/pins", headers=bob.headers)).json() == []
    assert "secret plan" not in (await client.get(f"{url}/thread", headers=bob.headers)).text
    assert (await client.delete(url, headers=carol.headers)).status_code == 204  # idempotent
    assert (await mine(client, bob, ws))[room]["mention_count"] == 0
    # The thread stays readable; nothing new attaches to a deleted root.
    assert (await client.get(f"{C}/{room}/messages/{reply['id']}", headers=bob.headers)).json()[
        "body"
    ] == "on it"
    problem(
        await post_message(client, bob.headers, room, "more", thread_root_id=plan["id"]),
        404,
        "thread_not_found",
    )
    problem(await client.put(f"{url}/reactions/tada", headers=bob.headers), 409, "message_deleted")
    problem(await client.put(f"{url}/pin", headers=bob.headers), 409, "message_deleted")

    # Someone else's message: workspace admins and owners may delete it, other members may not.
    for who, status in [(bob, 403), (admin, 204), (owner, 204)]:
        victim = await send(client, carol.headers, room, "delete me")
        response = await client.delete(f"{C}/{room}/messages/{victim['id']}", headers=who.headers)
        assert response.status_code == status, response.text
        if status == 403:
            problem(response, 403, "forbidden")
            assert (
                await client.get(f"{C}/{room}/messages/{victim['id']}", headers=carol.headers)
            ).json()["deleted"] is False

    # In a DM, the one who opened it is not a moderator of the other's messages either.
    dm = (await open_dm(client, bob, ws, carol)).json()["id"]
    theirs = await send(client, carol.headers, dm, "mine to keep")
    problem(
        await client.delete(f"{C}/{dm}/messages/{theirs['id']}", headers=bob.headers),
        403,
        "forbidden",
    )

    # Apps: a key deletes its own message; it needs the admin scope for anyone else's.
    sender = {
        "Authorization": f"Bearer {await create_api_key(client, owner, ws, ['messages:send'])}"
    }
    moderator = {"Authorization": f"Bearer {await create_api_key(client, owner, ws, ['admin'])}"}
    by_app = await send(client, sender, room, "build started")
    assert (
        await client.delete(f"{C}/{room}/messages/{by_app['id']}", headers=sender)
    ).status_code == 204
    victim = await send(client, carol.headers, room, "delete me too")
    problem(
        await client.delete(f"{C}/{room}/messages/{victim['id']}", headers=sender), 403, "forbidden"
    )
    assert (
        await client.delete(f"{C}/{room}/messages/{victim['id']}", headers=moderator)
    ).status_code == 204


async def test_reactions_and_pins(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    bob, carol = await add_members(client, owner, ws, "member", "member")
    room = (await create_channel(client, owner.headers, ws, members=[bob]))["id"]
    first = await send(client, owner.headers, room, "ship it?")
    second = await send(client, owner.headers, room, "or not")
    url = f"{C}/{room}/messages/{first['id']}"
    thumbs = quote("👍")

    added = await client.put(f"{url}/reactions/{thumbs}", headers=bob.headers)
    assert added.json() == [{"emoji": "👍", "count": 1, "user_ids": [bob.id]}]
    assert (
        await client.put(f"{url}/reactions/{thumbs}", headers=bob.headers)
    ).json() == added.json()
    await client.put(f"{url}/reactions/{thumbs}", headers=owner.headers)
    both = await client.put(f"{url}/reactions/tada", headers=owner.headers)
    assert [(r["emoji"], r["count"], set(r["user_ids"])) for r in both.json()] == [
        ("👍", 2, {bob.id, owner.id}),
        ("tada", 1, {owner.id}),
    ]
    assert (await client.get(url, headers=bob.headers)).json()["reactions"] == both.json()
    removed = await client.delete(f"{url}/reactions/{thumbs}", headers=bob.headers)
    assert [(r["emoji"], r["count"]) for r in removed.json()] == [("👍", 1), ("tada", 1)]
    assert (
        await client.delete(f"{url}/reactions/{thumbs}", headers=bob.headers)
    ).json() == removed.json()
    for bad in (quote("two words"), "x" * 65):
        problem(
            await client.put(f"{url}/reactions/{bad}", headers=bob.headers), 400, "invalid_emoji"
        )
    problem(await client.put(f"{url}/reactions/tada", headers=carol.headers), 403, "not_a_member")
    problem(
        await client.put(f"{C}/{room}/messages/{uuid.uuid4()}/reactions/tada", headers=bob.headers),
        404,
        "message_not_found",
    )

    pinned = await client.put(f"{url}/pin", headers=bob.headers)
    assert (pinned.status_code, pinned.json()["pinned"]) == (200, True)
    assert (await client.put(f"{url}/pin", headers=bob.headers)).json()["pinned"] is True
    await client.put(f"{C}/{room}/messages/{second['id']}/pin", headers=owner.headers)
    pins = (await client.get(f"{C}/{room}/pins", headers=carol.headers)).json()
    assert [p["id"] for p in pins] == [second["id"], first["id"]]  # most recently pinned first
    problem(await client.put(f"{url}/pin", headers=carol.headers), 403, "not_a_member")
    unpinned = await client.delete(f"{url}/pin", headers=owner.headers)
    assert unpinned.json()["pinned"] is False
    assert (await client.delete(f"{url}/pin", headers=owner.headers)).json()["pinned"] is False
    assert [
        p["id"] for p in (await client.get(f"{C}/{room}/pins", headers=bob.headers)).json()
    ] == [second["id"]]


async def test_threads(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    bob, carol, dave = await add_members(client, owner, ws, "member", "member", "member")
    room = (await create_channel(client, owner.headers, ws, members=[bob, carol, dave]))["id"]
    other = (await create_channel(client, owner.headers, ws))["id"]
    root = await send(client, owner.headers, room, "release plan")
    between = await send(client, dave.headers, room, "unrelated")
    replies = [
        await send(client, who.headers, room, text, thread_root_id=root["id"])
        for who, text in [(bob, "looks good"), (carol, "one question"), (bob, "answered")]
    ]
    assert all(r["thread_root_id"] == root["id"] for r in replies)

    fetched = (await client.get(f"{C}/{room}/messages/{root['id']}", headers=dave.headers)).json()
    assert fetched["reply_count"] == 3
    assert fetched["last_reply_at"] is not None
    thread = (
        await client.get(f"{C}/{room}/messages/{root['id']}/thread", headers=carol.headers)
    ).json()
    assert thread["root"]["id"] == root["id"]
    assert [r["body"] for r in thread["replies"]] == ["looks good", "one question", "answered"]
    assert thread["participant_ids"] == sorted([owner.id, bob.id, carol.id])
    assert (thread["following"], thread["has_more"]) == (True, False)
    paged = (
        await client.get(
            f"{C}/{room}/messages/{root['id']}/thread", params={"limit": 2}, headers=carol.headers
        )
    ).json()
    assert ([r["id"] for r in paged["replies"]], paged["has_more"]) == (
        [replies[0]["id"], replies[1]["id"]],
        True,
    )
    rest = (
        await client.get(
            f"{C}/{room}/messages/{root['id']}/thread",
            params={"after": replies[1]["seq"]},
            headers=carol.headers,
        )
    ).json()
    assert [r["id"] for r in rest["replies"]] == [replies[2]["id"]]

    # History is the channel's top level; replies live in their thread.
    assert [m["id"] for m in (await history(client, dave.headers, room))["messages"]] == [
        root["id"],
        between["id"],
    ]
    # Replies do not count as unread in the channel (carol replied, which reads nothing).
    assert (await mine(client, carol, ws))[room]["unread_count"] == 2

    nested = f"{C}/{room}/messages/{replies[0]['id']}"
    problem(
        await post_message(client, bob.headers, room, "deeper", thread_root_id=replies[0]["id"]),
        400,
        "nested_thread",
    )
    problem(await client.get(f"{nested}/thread", headers=bob.headers), 400, "nested_thread")
    problem(await client.put(f"{nested}/follow", headers=bob.headers), 400, "nested_thread")
    problem(
        await post_message(client, owner.headers, other, "x", thread_root_id=root["id"]),
        404,
        "thread_not_found",
    )

    # Following: participants follow; they may stop; anyone who can read may follow.
    thread_url = f"{C}/{room}/messages/{root['id']}"
    assert (await client.delete(f"{thread_url}/follow", headers=carol.headers)).status_code == 204
    carol_view = (await client.get(f"{thread_url}/thread", headers=carol.headers)).json()
    assert (carol_view["following"], carol.id in carol_view["participant_ids"]) == (False, True)
    assert (await client.put(f"{thread_url}/follow", headers=carol.headers)).status_code == 204
    assert (await client.get(f"{thread_url}/thread", headers=carol.headers)).json()[
        "following"
    ] is True
    assert (await client.put(f"{thread_url}/follow", headers=dave.headers)).status_code == 204
    dave_view = (await client.get(f"{thread_url}/thread", headers=dave.headers)).json()
    assert (dave_view["following"], dave.id in dave_view["participant_ids"]) == (True, False)

    # The root's author who unfollowed before anyone replied stays unfollowed.
    quiet = await send(client, owner.headers, room, "no need to follow this")
    quiet_url = f"{C}/{room}/messages/{quiet['id']}"
    assert (await client.delete(f"{quiet_url}/follow", headers=owner.headers)).status_code == 204
    await send(client, bob.headers, room, "fyi", thread_root_id=quiet["id"])
    quiet_view = (await client.get(f"{quiet_url}/thread", headers=owner.headers)).json()
    assert (quiet_view["following"], quiet_view["participant_ids"]) == (False, [bob.id])


async def test_history_keyset_pagination(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    room = (await create_channel(client, owner.headers, ws))["id"]
    top: list[int] = []
    for i in range(1, 13):
        sent = await send(client, owner.headers, room, f"m{i}")
        top.append(sent["seq"])
        if i in (4, 9):  # replies take sequences too, but are not in the history
            await send(client, owner.headers, room, "reply", thread_root_id=sent["id"])
    assert top == [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14]

    async def page(**params: int) -> tuple[list[int], bool, bool]:
        body = await history(client, owner.headers, room, **params)
        return [m["seq"] for m in body["messages"]], body["has_more_before"], body["has_more_after"]

    assert await page() == (top, False, False)
    assert await page(limit=5) == ([9, 10, 12, 13, 14], True, False)
    assert await page(before=9, limit=5) == ([3, 4, 6, 7, 8], True, True)
    assert await page(before=3, limit=5) == ([1, 2], False, True)
    assert await page(after=0, limit=5) == ([1, 2, 3, 4, 6], False, True)
    assert await page(after=10, limit=5) == ([12, 13, 14], True, False)
    assert await page(around=7, limit=4) == ([4, 6, 7, 8], True, True)
    assert await page(around=1, limit=4) == ([1, 2], False, True)
    assert await page(around=14, limit=4) == ([12, 13, 14], True, False)
    assert await page(around=5, limit=1) == ([6], True, True)

    # Walking either way visits every message once.
    backwards: list[int] = []
    seqs, more, _ = await page(limit=5)
    while True:
        backwards = seqs + backwards
        if not more:
            break
        seqs, more, _ = await page(before=seqs[0], limit=5)
    forwards: list[int] = []
    seqs, _, more = await page(after=0, limit=5)
    while True:
        forwards += seqs
        if not more:
            break
        seqs, _, more = await page(after=seqs[-1], limit=5)
    assert backwards == forwards == top

    url = f"{C}/{room}/messages"
    assert (await client.get(url, params={"limit": 200}, headers=owner.headers)).status_code == 200
    for params in (
        {"limit": 0},
        {"limit": 201},
        {"before": 0},
        {"after": -1},
        {"around": 0},
        {"before": "x"},
    ):
        problem(
            await client.get(url, params=params, headers=owner.headers), 400, "validation_failed"
        )
    for params in ({"before": 5, "after": 2}, {"around": 5, "before": 7}):
        problem(await client.get(url, params=params, headers=owner.headers), 400, "invalid_cursor")
