"""The realtime gateway with real WebSocket clients against a real uvicorn server, on both
profiles: live chat, access control, resume, typing, presence, heartbeats, back-pressure."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import uuid
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.realtime.conftest import LiveServer, live_server
from tests.support.helpers import eventually
from tests.support.users import Account, add_member, create_workspace, register
from tidings.settings import Settings


async def _general(live: LiveServer, account: Account, workspace: str) -> str:
    response = await live.http.get(
        f"/api/v1/workspaces/{workspace}/conversations", headers=account.headers
    )
    [general] = [c for c in response.json() if c["name"] == "general"]
    conversation_id: str = general["id"]
    return conversation_id


async def _team(live: LiveServer) -> tuple[Account, Account, str, str]:
    """Ada (owner) and Bob (member) of one workspace, both in #general."""
    ada = await register(live.http)
    workspace = await create_workspace(live.http, ada)
    bob = await add_member(live.http, ada, workspace, "member")
    general = await _general(live, ada, workspace)

    async def bob_in_general() -> bool:
        members = await live.http.get(
            f"/api/v1/conversations/{general}/members", headers=ada.headers
        )
        return bob.id in {m["user_id"] for m in members.json()}

    await eventually(bob_in_general)
    return ada, bob, workspace, general


async def _send(live: LiveServer, account: Account, conversation: str, body: str) -> dict[str, Any]:
    response = await live.http.post(
        f"/api/v1/conversations/{conversation}/messages",
        json={"body": body},
        headers=account.headers,
    )
    assert response.status_code == 201, response.text
    message: dict[str, Any] = response.json()
    return message


def _is_message(body: str) -> Any:
    return lambda f: f.get("event") == "message.created" and f["data"]["message"]["body"] == body


async def test_two_people_chat_live(live: LiveServer) -> None:
    ada, bob, _, general = await _team(live)
    ada_ws, bob_ws = await live.connect(ada), await live.connect(bob)
    stream = f"conversation:{general}"
    assert stream in bob_ws.hello["positions"]

    ack = await ada_ws.request("send", conversation_id=general, body="hello Bob", client_id="m1")
    assert ack["type"] == "ack"
    message = ack["data"]["message"]
    received = await bob_ws.expect("event", _is_message("hello Bob"))
    assert received["stream"] == stream
    assert received["data"]["message"]["id"] == message["id"]
    assert received["seq"] > bob_ws.hello["positions"][stream]

    await _send(live, bob, general, "hi Ada, over HTTP")
    over_http = await ada_ws.expect("event", _is_message("hi Ada, over HTTP"))
    assert over_http["seq"] == received["seq"] + 1

    # A repeated client_id is the same message, acknowledged again, not a new event.
    again = await ada_ws.request("send", conversation_id=general, body="hello Bob", client_id="m1")
    assert again["data"]["message"]["id"] == message["id"]
    assert again["data"]["created"] is False


async def test_a_burst_arrives_whole_and_in_order(live: LiveServer) -> None:
    # Sends committed together reach each subscriber as one write of several frames.
    ada, bob, _, general = await _team(live)
    bob_ws = await live.connect(bob)
    stream = f"conversation:{general}"
    start = bob_ws.hello["positions"][stream]
    await asyncio.gather(*(_send(live, ada, general, f"burst {i}") for i in range(30)))
    seqs: list[int] = []
    while len(seqs) < 30:
        frame = await bob_ws.expect("event", lambda f: f.get("event") == "message.created")
        seqs.append(frame["seq"])
    assert seqs == list(range(start + 1, start + 31))


async def test_events_of_every_kind_reach_members(live: LiveServer) -> None:
    ada, bob, _, general = await _team(live)
    bob_ws = await live.connect(bob)
    message = await _send(live, ada, general, "edit me")
    base = f"/api/v1/conversations/{general}/messages/{message['id']}"
    await live.http.patch(base, json={"body": "edited"}, headers=ada.headers)
    await live.http.put(f"{base}/reactions/tada", headers=ada.headers)
    reply = await live.http.post(
        f"/api/v1/conversations/{general}/messages",
        json={"body": "a reply", "thread_root_id": message["id"]},
        headers=ada.headers,
    )
    assert reply.status_code == 201
    await live.http.delete(base, headers=ada.headers)
    expected = [
        "message.created",
        "message.edited",
        "reaction.added",
        "message.created",
        "message.deleted",
    ]
    seen: list[str] = []
    while len(seen) < len(expected):
        frame = await bob_ws.expect(
            "event", lambda f: f["event"].startswith(("message", "reaction"))
        )
        seen.append(frame["event"])
    assert seen == expected
    seqs = [f["seq"] for f in bob_ws.events(f"conversation:{general}")]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == len(seqs)


async def test_a_stranger_is_refused_and_sees_nothing(live: LiveServer) -> None:
    ada, _, _, general = await _team(live)
    private = await live.http.post(
        f"/api/v1/workspaces/{(await live.http.get('/api/v1/workspaces', headers=ada.headers)).json()[0]['id']}/conversations",
        json={"kind": "private", "name": "secret"},
        headers=ada.headers,
    )
    assert private.status_code == 201
    secret = private.json()["id"]
    stranger = await register(live.http)
    stranger_ws = await live.connect(stranger)
    assert stranger_ws.hello["positions"] == {f"personal:{stranger.id}": 0}

    refused = await stranger_ws.request("subscribe", conversation_id=secret)
    assert refused["type"] == "error"
    assert refused["problem"]["code"] == "conversation_not_found"
    refused = await stranger_ws.request("subscribe", conversation_id=general)
    assert refused["problem"]["code"] == "conversation_not_found"
    typing = await stranger_ws.request("typing", conversation_id=general)
    assert typing["problem"]["code"] == "conversation_not_found"
    sent = await stranger_ws.request("send", conversation_id=general, body="let me in")
    assert sent["problem"]["code"] == "conversation_not_found"

    await _send(live, ada, secret, "top secret")
    await _send(live, ada, general, "internal")
    await asyncio.sleep(0.5)
    with pytest.raises(TimeoutError):
        await stranger_ws.expect("event", timeout=0.5)
    assert stranger_ws.events() == []


async def test_connecting_needs_valid_credentials(live: LiveServer) -> None:
    ada = await register(live.http)
    for url in (
        live.ws_url,
        f"{live.ws_url}?ticket=tdt_forged",
        f"{live.ws_url}?access_token=not.a.jwt",
        live.ws_url.replace("/api/v1/realtime", "/api/v1/elsewhere")
        + f"?access_token={ada.access_token}",
    ):
        with pytest.raises(InvalidStatus) as refused:
            await connect(url)
        assert refused.value.response.status_code in {401, 404}
    # A ticket works once.
    ticket = await live.ticket(ada)
    first = await connect(f"{live.ws_url}?ticket={ticket}")
    await first.close()
    with pytest.raises(InvalidStatus):
        await connect(f"{live.ws_url}?ticket={ticket}")
    # An access token in the Authorization header works too (non-browser clients).
    async with connect(live.ws_url, additional_headers=ada.headers) as socket:
        hello = json.loads(await socket.recv())
        assert hello["type"] == "hello"
        assert hello["user_id"] == ada.id


async def test_signing_out_closes_the_socket(live: LiveServer) -> None:
    ada = await register(live.http)
    client = await live.connect(ada)
    response = await live.http.post("/api/v1/auth/logout", headers=ada.headers, json={})
    assert response.status_code == 204
    with pytest.raises(ConnectionClosed) as closed:
        await client.expect("never", timeout=5)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4001


async def test_resume_gets_exactly_the_missed_events(live: LiveServer) -> None:
    ada, bob, _, general = await _team(live)
    stream = f"conversation:{general}"
    bob_ws = await live.connect(bob)
    await _send(live, ada, general, "before")
    seen = await bob_ws.expect("event", _is_message("before"))
    await bob_ws.close()

    missed = [await _send(live, ada, general, f"missed {i}") for i in range(5)]
    bob_ws = await live.connect(bob)
    reply = await bob_ws.request("resume", positions={stream: seen["seq"]})
    assert reply["type"] == "resumed"
    assert reply["streams"][stream] == {"recovered": True, "count": 5}
    replayed = bob_ws.events(stream)
    assert [f["data"]["message"]["id"] for f in replayed] == [m["id"] for m in missed]
    assert [f["seq"] for f in replayed] == list(range(seen["seq"] + 1, seen["seq"] + 6))

    # Live events continue after the replay, in order, without duplicates.
    await _send(live, ada, general, "after")
    after = await bob_ws.expect("event", _is_message("after"))
    assert after["seq"] == seen["seq"] + 6


async def test_resume_in_the_connect_url_replays_before_anything_live(live: LiveServer) -> None:
    ada, bob, _, general = await _team(live)
    stream = f"conversation:{general}"
    bob_ws = await live.connect(bob)
    position = bob_ws.hello["positions"][stream]
    await bob_ws.close()
    missed = [await _send(live, ada, general, f"missed {i}") for i in range(3)]
    ticket = await live.ticket(bob)
    resume = quote(json.dumps({stream: position}))
    socket = await connect(f"{live.ws_url}?ticket={ticket}&resume={resume}")
    live.clients.append(socket)
    frames: list[dict[str, Any]] = []
    while len(frames) < 5:  # presence may come in between; the stream's frames keep their order
        frame = json.loads(await asyncio.wait_for(socket.recv(), 5))
        if frame["type"] != "presence":
            frames.append(frame)
    assert [f["type"] for f in frames] == ["hello", "event", "event", "event", "resumed"]
    assert [f["data"]["message"]["id"] for f in frames[1:4]] == [m["id"] for m in missed]
    assert frames[4]["streams"][stream] == {"recovered": True, "count": 3}
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"{live.ws_url}?ticket={await live.ticket(bob)}&resume={quote('[1,2]')}")
    assert refused.value.response.status_code == 400


async def test_resume_beyond_the_window_requires_a_resync(
    settings_values: dict[str, Any],
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, **{**settings_values, "resume_max_events": 3, "ws_heartbeat_seconds": 5}
    )
    async with live_server(settings) as live:
        ada, bob, _, general = await _team(live)
        stream = f"conversation:{general}"
        bob_ws = await live.connect(bob)
        position = bob_ws.hello["positions"][stream]
        await bob_ws.close()
        for i in range(4):
            await _send(live, ada, general, f"while away {i}")
        bob_ws = await live.connect(bob)
        reply = await bob_ws.request(
            "resume", positions={stream: position, "conversation:not-mine": 1}
        )
        assert reply["streams"][stream] == {"recovered": False, "reason": "too_many"}
        assert reply["streams"]["conversation:not-mine"]["reason"] == "not_subscribed"
        resyncs = [f for f in bob_ws.frames if f["type"] == "resync_required"]
        assert {f["stream"] for f in resyncs} == {stream, "conversation:not-mine"}
        assert bob_ws.events(stream) == []
        # A position the server never handed out (e.g. from another deployment) is refused too.
        reply = await bob_ws.request("resume", positions={stream: position + 1000})
        assert reply["streams"][stream]["reason"] == "unknown_position"


async def test_typing_is_relayed_and_expires(live: LiveServer) -> None:
    ada, bob, _, general = await _team(live)
    ada_ws, bob_ws = await live.connect(ada), await live.connect(bob)
    await ada_ws.socket.send(json.dumps({"type": "typing", "conversation_id": general}))
    started = await bob_ws.expect("typing")
    assert started == {
        "type": "typing",
        "conversation_id": general,
        "user_id": ada.id,
        "state": "start",
        "ttl_ms": 600,
    }
    # Not echoed to the typist; expires by itself after the TTL with an explicit stop.
    stopped = await bob_ws.expect("typing", timeout=3)
    assert stopped["state"] == "stop"
    assert not [f for f in ada_ws.frames if f["type"] == "typing"]
    # Sending a message ends typing at once.
    await ada_ws.socket.send(json.dumps({"type": "typing", "conversation_id": general}))
    await bob_ws.expect("typing", lambda f: f["state"] == "start")
    await ada_ws.request("send", conversation_id=general, body="done typing")
    await bob_ws.expect("typing", lambda f: f["state"] == "stop", timeout=0.5)


async def test_presence_survives_one_device_leaving(live: LiveServer) -> None:
    ada, bob, workspace, _ = await _team(live)
    ada_ws = await live.connect(ada)
    phone = await live.connect(bob)
    online = await ada_ws.expect("presence", lambda f: f["user_id"] == bob.id)
    assert online["status"] == "online"
    laptop = await live.connect(bob)
    assert laptop.hello["presence"][ada.id] == "online"

    await phone.close()
    await asyncio.sleep(0.3)
    presence = await live.http.get(f"/api/v1/workspaces/{workspace}/presence", headers=ada.headers)
    assert presence.json()[bob.id] == "online"
    assert not [f for f in ada_ws.frames if f["type"] == "presence" and f["status"] == "offline"]

    await laptop.request("presence", status="away")
    away = await ada_ws.expect("presence", lambda f: f["user_id"] == bob.id)
    assert away["status"] == "away"
    await laptop.close()
    offline = await ada_ws.expect("presence", lambda f: f["user_id"] == bob.id)
    assert offline["status"] == "offline"
    presence = await live.http.get(f"/api/v1/workspaces/{workspace}/presence", headers=ada.headers)
    assert bob.id not in presence.json()


async def _raw_socket(
    live: LiveServer, account: Account
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that completes the handshake and then does nothing: no reads, no pongs."""
    ticket = await live.ticket(account)
    host, port = live.base_url.removeprefix("http://").split(":")
    raw = socket.socket()
    # A small receive window, so a client that stops reading backs up into the server fast.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.setblocking(False)
    await asyncio.get_running_loop().sock_connect(raw, (host, int(port)))
    reader, writer = await asyncio.open_connection(sock=raw)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /api/v1/realtime?ticket={ticket} HTTP/1.1\r\nHost: {host}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    status = await reader.readline()
    assert b"101" in status
    return reader, writer


async def test_a_silent_peer_is_closed_and_its_presence_cleared(
    settings_values: dict[str, Any],
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        **{**settings_values, "ws_heartbeat_seconds": 0.2, "ws_idle_timeout_seconds": 1.0},
    )
    async with live_server(settings) as live:
        ada, bob, _, _ = await _team(live)
        ada_ws = await live.connect(ada)
        _, writer = await _raw_socket(live, bob)
        await ada_ws.expect(
            "presence", lambda f: f["user_id"] == bob.id and f["status"] == "online"
        )
        # Bob's client never answers pings; Ada's library does, so she stays.
        offline = await ada_ws.expect("presence", lambda f: f["user_id"] == bob.id, timeout=10)
        assert offline["status"] == "offline"
        gateway = live.runtime.realtime

        async def bob_gone() -> bool:
            return not gateway.hub.by_user.get(uuid.UUID(bob.id))

        await eventually(bob_gone)
        assert (await ada_ws.request("ping"))["type"] == "pong"
        writer.close()


async def test_a_slow_consumer_is_cut_off_without_harming_others(
    settings_values: dict[str, Any],
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        **{
            **settings_values,
            "ws_send_buffer_bytes": 65_536,
            "ws_socket_send_buffer_bytes": 16_384,
        },
    )
    async with live_server(settings) as live:
        ada, bob, _, general = await _team(live)
        carol = await add_member(
            live.http,
            ada,
            (await live.http.get("/api/v1/workspaces", headers=ada.headers)).json()[0]["id"],
            "member",
        )
        bob_ws = await live.connect(bob)
        _, writer = await _raw_socket(live, carol)
        transport = writer.transport
        # Carol's client stops reading: the kernel buffers fill, then the server's.
        transport.pause_reading()  # type: ignore[attr-defined]
        gateway = live.runtime.realtime

        async def carol_in_general() -> bool:
            return any(
                c.user_id.hex == carol.id.replace("-", "")
                for c in gateway.hub.rooms.get(f"conversation:{general}", ())
            )

        await eventually(carol_in_general)
        body = "x" * 9000
        total = 200
        received: set[str] = set()

        async def bob_reads() -> None:
            while len(received) < total:
                frame = await bob_ws.expect(
                    "event", lambda f: f.get("event") == "message.created", timeout=15
                )
                received.add(frame["data"]["message"]["body"].split(":")[0])

        reading = asyncio.create_task(bob_reads())
        for i in range(total):
            await _send(live, ada, general, f"{i}:{body}")
        await asyncio.wait_for(reading, 30)
        assert len(received) == total
        assert gateway.slow_consumers >= 1
        assert all(c.user_id.hex != carol.id.replace("-", "") for c in gateway._all())
        writer.close()


async def test_bad_commands_get_problem_frames(live: LiveServer) -> None:
    ada = await register(live.http)
    client = await live.connect(ada)
    await client.socket.send("not json")
    error = await client.expect("error")
    assert error["problem"]["code"] == "invalid_command"
    reply = await client.request("dance")
    assert reply["problem"]["code"] == "invalid_command"
    reply = await client.request("send", conversation_id="not-a-uuid", body="x")
    assert reply["problem"]["code"] == "invalid_command"
    assert any(e["field"].endswith("conversation_id") for e in reply["problem"]["errors"])
    await client.socket.send(b"\x00binary")
    error = await client.expect("error")
    assert error["problem"]["code"] == "binary_not_supported"


async def test_commands_are_rate_limited_per_connection(settings_values: dict[str, Any]) -> None:
    settings = Settings(_env_file=None, **{**settings_values, "ws_rate_limit": "5/minute"})  # type: ignore[call-arg]
    async with live_server(settings) as live:
        ada = await register(live.http)
        client = await live.connect(ada)
        replies = [await client.request("ping") for _ in range(5)]
        assert all(r["type"] == "pong" for r in replies)
        await client.socket.send(json.dumps({"type": "ping", "ref": "over"}))
        limited = await client.expect("error")
        assert limited["problem"]["code"] == "rate_limited"
        assert limited["ref"] == "over"


async def test_server_sent_events_carry_the_same_frames(live: LiveServer) -> None:
    ada, bob, _, general = await _team(live)
    ticket = await live.ticket(bob)
    async with (
        httpx.AsyncClient(base_url=live.base_url, timeout=10) as http,
        http.stream("GET", f"/api/v1/realtime/events?ticket={ticket}") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()

        async def next_data() -> dict[str, Any]:
            async for line in lines:
                if line.startswith("data: "):
                    frame: dict[str, Any] = json.loads(line[6:])
                    return frame
            raise AssertionError("stream ended")

        hello = await asyncio.wait_for(next_data(), 5)
        assert hello["type"] == "hello"
        await _send(live, ada, general, "over SSE")
        while True:
            frame = await asyncio.wait_for(next_data(), 5)
            if frame.get("event") == "message.created":
                break
        assert frame["data"]["message"]["body"] == "over SSE"
    unauthenticated = await live.http.get("/api/v1/realtime/events")
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers["content-type"] == "application/problem+json"


async def test_joining_a_conversation_subscribes_open_connections(live: LiveServer) -> None:
    ada, bob, workspace, _ = await _team(live)
    bob_ws = await live.connect(bob)
    created = await live.http.post(
        f"/api/v1/workspaces/{workspace}/conversations",
        json={"kind": "private", "name": "plans", "member_ids": [bob.id]},
        headers=ada.headers,
    )
    plans = created.json()["id"]
    joined = await bob_ws.expect("event", lambda f: f.get("event") == "conversation.member_joined")
    assert joined["stream"] == f"conversation:{plans}"
    await _send(live, ada, plans, "in plans")
    await bob_ws.expect("event", _is_message("in plans"))
    await live.http.delete(f"/api/v1/conversations/{plans}/members/{bob.id}", headers=ada.headers)
    await bob_ws.expect("event", lambda f: f.get("event") == "conversation.member_left")
    await _send(live, ada, plans, "after bob left")
    await asyncio.sleep(0.5)
    assert not [
        f for f in bob_ws.events() if f["data"].get("message", {}).get("body") == "after bob left"
    ]


async def test_joining_a_workspace_while_connected_brings_its_presence(live: LiveServer) -> None:
    # Ada and Cy share no workspace when they connect.
    ada = await register(live.http)
    cy = await register(live.http)
    await create_workspace(live.http, cy, "Cy's")
    ada_ws = await live.connect(ada)
    cy_ws = await live.connect(cy)
    assert cy.id not in ada_ws.hello["presence"]

    # Then, without reconnecting, Ada creates a workspace and Cy accepts an invitation to it.
    workspace = await create_workspace(live.http, ada, "Shared")
    invited = await live.http.post(
        f"/api/v1/workspaces/{workspace}/invitations", json={"role": "member"}, headers=ada.headers
    )
    assert invited.status_code == 201, invited.text
    accepted = await live.http.post(
        "/api/v1/invitations/accept", json={"token": invited.json()["token"]}, headers=cy.headers
    )
    assert accepted.status_code == 200, accepted.text

    # Each sees the other online, and a later change reaches the other side live.
    seen = await ada_ws.expect("presence", lambda f: f["user_id"] == cy.id)
    assert seen["status"] == "online"
    told = await cy_ws.expect("presence", lambda f: f["user_id"] == ada.id)
    assert told["status"] == "online"
    await cy_ws.request("presence", status="away")
    away = await ada_ws.expect(
        "presence", lambda f: f["user_id"] == cy.id and f["status"] == "away"
    )
    assert away["status"] == "away"
