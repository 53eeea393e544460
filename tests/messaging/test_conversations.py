"""Conversations: channels, direct and group messages, membership, read state and mutes."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.support.messaging import (
    add_members,
    create_channel,
    create_conversation,
    general,
    mine,
    open_dm,
    post_message,
    problem,
    send,
)
from tests.support.users import create_workspace, register

C = "/api/v1/conversations"


async def test_channel_names_are_slack_style_and_unique(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    made = await create_conversation(
        client, owner.headers, ws, kind="public", name="  #Q3 Plans ", topic=" launch "
    )
    assert made.status_code == 201, made.text
    channel = made.json()
    assert (channel["name"], channel["topic"], channel["kind"]) == ("q3-plans", "launch", "public")
    assert channel["is_member"] is True
    assert channel["created_by"] == owner.id
    assert (channel["last_seq"], channel["last_read_seq"], channel["member_count"]) == (0, 0, 1)

    for bad in ["", "   ", "!!", "-lead", "_x", "café", "a.b", "#"]:
        response = await create_conversation(client, owner.headers, ws, kind="public", name=bad)
        problem(response, 400, "invalid_name")
    problem(
        await create_conversation(client, owner.headers, ws, kind="private"), 400, "invalid_name"
    )
    too_long = await create_conversation(client, owner.headers, ws, kind="public", name="x" * 81)
    body = problem(too_long, 400, "validation_failed")
    assert [e["field"] for e in body["errors"]] == ["body.name"]
    longest = await create_conversation(client, owner.headers, ws, kind="public", name="x" * 80)
    assert longest.status_code == 201

    # Names are unique per workspace, whatever their case or kind; #general is taken from birth.
    for taken, kind in [("Q3-PLANS", "public"), ("q3-plans", "private"), ("general", "public")]:
        response = await create_conversation(client, owner.headers, ws, kind=kind, name=taken)
        problem(response, 409, "name_taken")
    other_ws = await create_workspace(client, owner, "Other")
    elsewhere = await create_conversation(
        client, owner.headers, other_ws, kind="public", name="q3-plans"
    )
    assert elsewhere.status_code == 201  # another workspace, another namespace

    problem(
        await create_conversation(client, owner.headers, ws, kind="direct", name="dm"),
        400,
        "invalid_name",
    )
    problem(
        await create_conversation(client, owner.headers, ws, kind="support"),
        400,
        "validation_failed",
    )
    problem(
        await create_conversation(client, owner.headers, ws, kind="public", name="x", colour="red"),
        400,
        "validation_failed",
    )


async def test_private_channels_are_invisible_and_public_ones_are_joined(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    bob, carol, guest = await add_members(client, owner, ws, "member", "member", "guest")
    secret = await create_channel(
        client, owner.headers, ws, "zanzibar", private=True, members=[bob]
    )
    open_ = await create_channel(client, owner.headers, ws, "open")

    seen = await client.get(f"{C}/{secret['id']}", headers=bob.headers)
    assert seen.status_code == 200
    assert seen.json()["is_member"] is True
    assert secret["id"] in await mine(client, bob, ws)

    # Someone outside a private channel cannot tell it exists.
    for method, path, body in [
        ("GET", "", None),
        ("GET", "/messages", None),
        ("GET", "/members", None),
        ("GET", "/pins", None),
        ("POST", "/join", None),
        ("POST", "/messages", {"body": "let me in"}),
        ("PATCH", "", {"topic": "mine now"}),
        ("PUT", "/mute", {"muted": True}),
    ]:
        response = await client.request(
            method, f"{C}/{secret['id']}{path}", json=body, headers=carol.headers
        )
        problem(response, 404, "conversation_not_found")
        assert "zanzibar" not in response.text
    unknown = await client.get(f"{C}/{uuid.uuid4()}", headers=carol.headers)
    problem(unknown, 404, "conversation_not_found")

    browse = await client.get(
        f"/api/v1/workspaces/{ws}/conversations", params={"browse": "true"}, headers=carol.headers
    )
    listed = {c["name"]: c["is_member"] for c in browse.json()}
    assert set(listed) == {"general", "open"}
    assert listed["open"] is False
    assert secret["id"] not in await mine(client, carol, ws)

    # A public channel can be read before joining, but not written to.
    peek = await client.get(f"{C}/{open_['id']}", headers=carol.headers)
    assert (peek.status_code, peek.json()["is_member"]) == (200, False)
    assert (
        await client.get(f"{C}/{open_['id']}/messages", headers=carol.headers)
    ).status_code == 200
    problem(await post_message(client, carol.headers, open_["id"], "hi"), 403, "not_a_member")
    joined = await client.post(f"{C}/{open_['id']}/join", headers=carol.headers)
    assert (joined.status_code, joined.json()["is_member"]) == (200, True)
    again = await client.post(f"{C}/{open_['id']}/join", headers=carol.headers)
    assert (again.status_code, again.json()["is_member"]) == (200, True)
    await send(client, carol.headers, open_["id"], "hello")
    members = (await client.get(f"{C}/{open_['id']}/members", headers=carol.headers)).json()
    assert {m["user_id"] for m in members} == {owner.id, carol.id}

    # Guests see only what they were let into: public channels are hidden from them too.
    guest_browse = await client.get(
        f"/api/v1/workspaces/{ws}/conversations", params={"browse": "true"}, headers=guest.headers
    )
    assert open_["id"] not in {c["id"] for c in guest_browse.json()}
    problem(
        await client.get(f"{C}/{open_['id']}", headers=guest.headers), 404, "conversation_not_found"
    )
    problem(
        await client.post(f"{C}/{open_['id']}/join", headers=guest.headers),
        404,
        "conversation_not_found",
    )
    problem(
        await create_conversation(client, guest.headers, ws, kind="public", name="guests"),
        403,
        "forbidden",
    )

    # Outside the workspace, its conversations are not found either.
    outsider = await register(client)
    problem(
        await client.get(f"/api/v1/workspaces/{ws}/conversations", headers=outsider.headers),
        404,
        "workspace_not_found",
    )
    problem(
        await client.get(f"{C}/{open_['id']}", headers=outsider.headers),
        404,
        "conversation_not_found",
    )


async def test_direct_and_group_messages(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    admin, a, b, c, d, *rest = await add_members(
        client, owner, ws, "admin", "member", "member", "member", "member", *["member"] * 4
    )
    outsider = await register(client)

    first = await open_dm(client, owner, ws, a)
    assert first.status_code == 201, first.text
    dm = first.json()
    assert (dm["kind"], dm["name"], dm["member_count"], dm["is_member"]) == (
        "direct",
        None,
        2,
        True,
    )
    again = await open_dm(client, owner, ws, a)
    assert (again.status_code, again.json()["id"]) == (200, dm["id"])
    reverse = await open_dm(client, a, ws, owner)
    assert (reverse.status_code, reverse.json()["id"]) == (200, dm["id"])

    myself = await create_conversation(client, owner.headers, ws, kind="direct", member_ids=[])
    assert (myself.status_code, myself.json()["member_count"]) == (201, 1)
    same = await create_conversation(
        client, owner.headers, ws, kind="direct", member_ids=[owner.id]
    )
    assert (same.status_code, same.json()["id"]) == (200, myself.json()["id"])

    group = await open_dm(client, owner, ws, a, b)
    assert (group.status_code, group.json()["kind"], group.json()["member_count"]) == (
        201,
        "group",
        3,
    )
    group_id = group.json()["id"]
    reordered = await open_dm(client, b, ws, a, owner)
    assert (reordered.status_code, reordered.json()["id"]) == (200, group_id)

    # Three to nine people; beyond that it is a private channel.
    nine = await open_dm(client, owner, ws, admin, a, b, c, d, *rest[:3])
    assert (nine.status_code, nine.json()["member_count"]) == (201, 9)
    problem(await open_dm(client, owner, ws, admin, a, b, c, d, *rest), 400, "too_many_members")

    strangers = await create_conversation(
        client, owner.headers, ws, kind="direct", member_ids=[outsider.id]
    )
    body = problem(strangers, 400, "not_workspace_members")
    assert body["user_ids"] == [outsider.id]
    ghost = str(uuid.uuid4())
    body = problem(
        await create_conversation(
            client, owner.headers, ws, kind="group", member_ids=[a.id, ghost]
        ),
        400,
        "not_workspace_members",
    )
    assert body["user_ids"] == [ghost]

    # The people of a DM are fixed; a group member may leave, and is back when it is reopened.
    problem(
        await client.post(
            f"{C}/{group_id}/members", json={"user_ids": [c.id]}, headers=owner.headers
        ),
        409,
        "dm_members_fixed",
    )
    problem(
        await client.delete(f"{C}/{group_id}/members/{a.id}", headers=owner.headers),
        409,
        "dm_members_fixed",
    )
    problem(await client.post(f"{C}/{dm['id']}/leave", headers=a.headers), 409, "dm_members_fixed")
    problem(
        await client.post(f"{C}/{dm['id']}/members", json={"user_ids": [c.id]}, headers=a.headers),
        409,
        "dm_members_fixed",
    )
    problem(
        await client.patch(f"{C}/{dm['id']}", json={"name": "x"}, headers=a.headers),
        403,
        "forbidden",
    )
    problem(await client.post(f"{C}/{dm['id']}/archive", headers=a.headers), 403, "forbidden")
    await send(client, owner.headers, group_id, "before a leaves")
    assert (await client.post(f"{C}/{group_id}/leave", headers=a.headers)).status_code == 204
    problem(await client.get(f"{C}/{group_id}", headers=a.headers), 404, "conversation_not_found")
    reopened = await open_dm(client, a, ws, owner, b)
    assert (reopened.status_code, reopened.json()["id"]) == (200, group_id)
    assert reopened.json()["is_member"] is True
    back = await client.get(f"{C}/{group_id}/messages", headers=a.headers)
    assert back.status_code == 200, back.text
    await send(client, a.headers, group_id, "back again")

    # A DM is private to its people, workspace admins included.
    for intruder in (admin, c):
        problem(
            await client.get(f"{C}/{dm['id']}", headers=intruder.headers),
            404,
            "conversation_not_found",
        )
    assert dm["id"] not in await mine(client, c, ws)

    # Both people opening their DM at the same moment get the one conversation.
    opened = await asyncio.gather(*(open_dm(client, x, ws, y) for x, y in [(c, d), (d, c)] * 3))
    assert {r.status_code for r in opened} <= {200, 201}, [r.text for r in opened]
    assert len({r.json()["id"] for r in opened}) == 1
    assert [r.status_code for r in opened].count(201) == 1


async def test_unread_and_mention_counts(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    [bob] = await add_members(client, owner, ws, "member")

    # The creator has the welcome message waiting in #general.
    lobby = await general(client, owner, ws)
    assert (lobby["unread_count"], lobby["mention_count"], lobby["last_seq"]) == (1, 0, 1)

    team = await create_channel(client, owner.headers, ws, "team", members=[bob])
    await send(client, owner.headers, team["id"], "one")
    await send(client, owner.headers, team["id"], f"hey <@{bob.id}>, look")
    await send(client, owner.headers, team["id"], f"`<@{bob.id}>` is how a mention is written")
    await send(client, owner.headers, team["id"], f"```\n<@{bob.id}> in a block\n```")
    gone = await send(client, owner.headers, team["id"], "oops")
    assert (
        await client.delete(f"{C}/{team['id']}/messages/{gone['id']}", headers=owner.headers)
    ).status_code == 204
    counts = (await mine(client, bob, ws))[team["id"]]
    assert (counts["unread_count"], counts["mention_count"]) == (
        4,
        1,
    )  # the deleted one is not unread
    # One conversation read alone carries the same counts as the list (a client that learns
    # of a conversation from an event starts with the right badges).
    alone = (await client.get(f"{C}/{team['id']}", headers=bob.headers)).json()
    keys = ("unread_count", "mention_count", "member_count", "last_read_seq")
    assert {k: alone[k] for k in keys} == {k: counts[k] for k in keys}
    own = (await mine(client, owner, ws))[team["id"]]
    assert (own["unread_count"], own["mention_count"], own["last_read_seq"]) == (0, 0, 5)

    # @channel mentions everyone but the sender; posting marks the sender's view as read.
    shout = await send(client, bob.headers, team["id"], "@channel standup in 5")
    assert shout["mentions"] == {"users": [], "channel": True, "here": False}
    counts = (await mine(client, bob, ws))[team["id"]]
    assert (counts["unread_count"], counts["mention_count"], counts["last_read_seq"]) == (0, 0, 6)
    own = (await mine(client, owner, ws))[team["id"]]
    assert (own["unread_count"], own["mention_count"]) == (1, 1)

    # Thread replies are not unread in the channel, but a mention in one counts.
    await send(client, owner.headers, team["id"], f"<@{bob.id}> here", thread_root_id=shout["id"])
    counts = (await mine(client, bob, ws))[team["id"]]
    assert (counts["unread_count"], counts["mention_count"]) == (0, 1)

    # Reading past a mention clears it.
    read = await client.post(f"{C}/{team['id']}/read", json={"seq": 7}, headers=bob.headers)
    assert read.status_code == 200, read.text
    counts = (await mine(client, bob, ws))[team["id"]]
    assert (counts["unread_count"], counts["mention_count"], counts["last_read_seq"]) == (0, 0, 7)


async def test_read_position_moves_forward_only_and_mute(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    [bob] = await add_members(client, owner, ws, "member")
    room = await create_channel(client, owner.headers, ws, members=[bob])
    elsewhere = await create_channel(client, owner.headers, ws)
    for text in ("a", "b", "c", "d"):
        await send(client, owner.headers, room["id"], text)

    async def read(seq: int) -> httpx.Response:
        return await client.post(f"{C}/{room['id']}/read", json={"seq": seq}, headers=bob.headers)

    assert (await read(2)).json()["last_read_seq"] == 2
    assert (await mine(client, bob, ws))[room["id"]]["unread_count"] == 2
    assert (await read(1)).json()["last_read_seq"] == 2  # never back
    assert (await read(99)).json()["last_read_seq"] == 4  # capped at the last message
    assert (await mine(client, bob, ws))[room["id"]]["unread_count"] == 0
    await send(client, owner.headers, room["id"], "e")
    assert (await mine(client, bob, ws))[room["id"]]["unread_count"] == 1
    problem(await read(-1), 400, "validation_failed")
    problem(
        await client.post(f"{C}/{elsewhere['id']}/read", json={"seq": 1}, headers=bob.headers),
        403,
        "not_a_member",
    )

    muted = await client.put(f"{C}/{room['id']}/mute", json={"muted": True}, headers=bob.headers)
    assert (muted.status_code, muted.json()["muted"]) == (200, True)
    assert (await mine(client, bob, ws))[room["id"]]["muted"] is True
    assert (await mine(client, owner, ws))[room["id"]]["muted"] is False  # per person
    unmuted = await client.put(f"{C}/{room['id']}/mute", json={"muted": False}, headers=bob.headers)
    assert unmuted.json()["muted"] is False
    problem(
        await client.put(f"{C}/{elsewhere['id']}/mute", json={"muted": True}, headers=bob.headers),
        403,
        "not_a_member",
    )


async def test_topic_rename_archive_and_the_default_channel(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    bob, carol = await add_members(client, owner, ws, "member", "member")
    project = await create_channel(client, bob.headers, ws, "proj", members=[carol])
    pid = project["id"]
    earlier = await send(client, carol.headers, pid, "earlier")

    topic = await client.patch(f"{C}/{pid}", json={"topic": "  Ship it "}, headers=carol.headers)
    assert (topic.status_code, topic.json()["topic"]) == (200, "Ship it")
    problem(
        await client.patch(f"{C}/{pid}", json={"name": "mine"}, headers=carol.headers),
        403,
        "forbidden",
    )
    renamed = await client.patch(f"{C}/{pid}", json={"name": "Proj X"}, headers=bob.headers)
    assert (renamed.status_code, renamed.json()["name"]) == (200, "proj-x")
    by_owner = await client.patch(f"{C}/{pid}", json={"name": "proj-y"}, headers=owner.headers)
    assert (by_owner.status_code, by_owner.json()["name"]) == (200, "proj-y")
    problem(
        await client.patch(f"{C}/{pid}", json={"name": "general"}, headers=bob.headers),
        409,
        "name_taken",
    )
    problem(
        await client.patch(f"{C}/{pid}", json={"name": "no way!"}, headers=bob.headers),
        400,
        "invalid_name",
    )
    unchanged = await client.patch(f"{C}/{pid}", json={}, headers=carol.headers)
    assert (unchanged.status_code, unchanged.json()["name"]) == (200, "proj-y")

    problem(await client.post(f"{C}/{pid}/archive", headers=carol.headers), 403, "forbidden")
    archived = await client.post(f"{C}/{pid}/archive", headers=bob.headers)
    assert archived.status_code == 200
    assert archived.json()["archived_at"] is not None
    assert (await client.post(f"{C}/{pid}/archive", headers=bob.headers)).status_code == 200

    # Archived: readable, not writable.
    assert (await client.get(f"{C}/{pid}/messages", headers=carol.headers)).status_code == 200
    msg = f"{C}/{pid}/messages/{earlier['id']}"
    for method, path, body, who in [
        ("POST", f"{C}/{pid}/messages", {"body": "anyone?"}, carol),
        ("PATCH", f"{C}/{pid}", {"topic": "new"}, carol),
        ("PATCH", f"{C}/{pid}", {"name": "proj-z"}, bob),
        ("POST", f"{C}/{pid}/members", {"user_ids": [owner.id]}, bob),
        ("POST", f"{C}/{pid}/join", None, owner),
        ("PATCH", msg, {"body": "edited"}, carol),
        ("PUT", f"{msg}/reactions/tada", None, carol),
        ("PUT", f"{msg}/pin", None, carol),
    ]:
        response = await client.request(method, path, json=body, headers=who.headers)
        problem(response, 409, "conversation_archived")
    unarchived = await client.post(f"{C}/{pid}/unarchive", headers=bob.headers)
    assert (unarchived.status_code, unarchived.json()["archived_at"]) == (200, None)
    await send(client, carol.headers, pid, "we're back")

    # #general: everyone stays, it keeps its name and is never archived; its topic may change.
    lobby = (await general(client, owner, ws))["id"]
    problem(
        await client.patch(f"{C}/{lobby}", json={"name": "lobby"}, headers=owner.headers),
        409,
        "default_conversation",
    )
    problem(
        await client.post(f"{C}/{lobby}/archive", headers=owner.headers),
        409,
        "default_conversation",
    )
    problem(
        await client.post(f"{C}/{lobby}/leave", headers=owner.headers), 409, "default_conversation"
    )
    problem(
        await client.delete(f"{C}/{lobby}/members/{owner.id}", headers=owner.headers),
        409,
        "default_conversation",
    )
    problem(
        await client.delete(f"{C}/{lobby}/members/{bob.id}", headers=owner.headers),
        409,
        "default_conversation",
    )
    same = await client.patch(
        f"{C}/{lobby}", json={"name": "General", "topic": "All hands"}, headers=owner.headers
    )
    assert (same.status_code, same.json()["name"], same.json()["topic"]) == (
        200,
        "general",
        "All hands",
    )


async def test_add_remove_and_leave(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    bob, carol = await add_members(client, owner, ws, "member", "member")
    outsider = await register(client)
    crew = (await create_channel(client, bob.headers, ws, "crew", private=True))["id"]

    added = await client.post(
        f"{C}/{crew}/members", json={"user_ids": [carol.id]}, headers=bob.headers
    )
    assert added.json() == {"added": [carol.id]}
    again = await client.post(
        f"{C}/{crew}/members", json={"user_ids": [carol.id, bob.id]}, headers=bob.headers
    )
    assert again.json() == {"added": []}
    members = (await client.get(f"{C}/{crew}/members", headers=carol.headers)).json()
    assert {m["user_id"]: m["display_name"] for m in members} == {
        bob.id: bob.email.split("@")[0],
        carol.id: carol.email.split("@")[0],
    }
    body = problem(
        await client.post(
            f"{C}/{crew}/members", json={"user_ids": [outsider.id]}, headers=bob.headers
        ),
        400,
        "not_workspace_members",
    )
    assert body["user_ids"] == [outsider.id]
    problem(
        await client.post(f"{C}/{crew}/members", json={"user_ids": []}, headers=bob.headers),
        400,
        "validation_failed",
    )
    # The workspace owner is not in this private channel and cannot reach into it.
    problem(
        await client.post(
            f"{C}/{crew}/members", json={"user_ids": [owner.id]}, headers=owner.headers
        ),
        404,
        "conversation_not_found",
    )

    problem(
        await client.delete(f"{C}/{crew}/members/{bob.id}", headers=carol.headers), 403, "forbidden"
    )
    assert (
        await client.delete(f"{C}/{crew}/members/{carol.id}", headers=bob.headers)
    ).status_code == 204
    problem(
        await client.delete(f"{C}/{crew}/members/{carol.id}", headers=bob.headers),
        404,
        "member_not_found",
    )
    problem(await client.get(f"{C}/{crew}", headers=carol.headers), 404, "conversation_not_found")

    # Leaving a public channel: still readable, no longer yours; joining brings you back.
    hall = (await create_channel(client, owner.headers, ws, "hall", members=[carol]))["id"]
    assert (await client.post(f"{C}/{hall}/leave", headers=carol.headers)).status_code == 204
    assert hall not in await mine(client, carol, ws)
    problem(await client.post(f"{C}/{hall}/leave", headers=carol.headers), 404, "member_not_found")
    problem(await post_message(client, carol.headers, hall, "hi"), 403, "not_a_member")
    assert (await client.post(f"{C}/{hall}/join", headers=carol.headers)).status_code == 200
    # Leaving the last private channel you are in: it is gone for you.
    assert (await client.post(f"{C}/{crew}/leave", headers=bob.headers)).status_code == 204
    problem(await client.get(f"{C}/{crew}", headers=bob.headers), 404, "conversation_not_found")


async def test_a_deleted_workspace_has_no_conversations(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    ws = await create_workspace(client, owner)
    room = (await create_channel(client, owner.headers, ws))["id"]
    deleted = await client.delete(f"/api/v1/workspaces/{ws}", headers=owner.headers)
    assert deleted.status_code == 204
    problem(
        await client.get(f"/api/v1/workspaces/{ws}/conversations", headers=owner.headers),
        404,
        "workspace_not_found",
    )
    problem(
        await create_conversation(client, owner.headers, ws, kind="public", name="after"),
        404,
        "workspace_not_found",
    )
    problem(await client.get(f"{C}/{room}", headers=owner.headers), 404, "conversation_not_found")
    problem(
        await post_message(client, owner.headers, room, "anyone?"), 404, "conversation_not_found"
    )
