"""Two real `tidings serve` processes sharing PostgreSQL and Redis: a message sent through one
reaches WebSocket clients of the other, presence is the union of both, and a process that dies
takes its connections' presence with it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.conftest import TIDINGS_BIN, child_env, free_port
from tests.support.processes import kill9, spawn, wait_http_ok

PASSWORD = "correct horse battery"


async def _frame(
    socket: ClientConnection, kind: str, where: Any = None, within: float = 10
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        frame: dict[str, Any] = json.loads(
            await asyncio.wait_for(socket.recv(), max(0.01, deadline - loop.time()))
        )
        if frame["type"] == kind and (where is None or where(frame)):
            return frame


async def _account(http: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    response = await http.post(
        "/api/v1/auth/register",
        json={"email": f"{name}@example.com", "password": PASSWORD, "display_name": name},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    return body["user"]["id"], {"Authorization": f"Bearer {body['tokens']['access_token']}"}


@pytest.mark.profiles("scaled")
async def test_two_serve_processes_share_messages_and_presence(
    profile: str, settings_values: dict[str, Any], tmp_path: Path
) -> None:
    env = child_env({**settings_values, "node_heartbeat_seconds": 0.3}, TIDINGS_LOG_LEVEL="warning")
    port_a, port_b = free_port(), free_port()
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    with (
        spawn([TIDINGS_BIN, "serve", "--port", str(port_a)], env, log_a) as a,
        spawn([TIDINGS_BIN, "serve", "--port", str(port_b)], env, log_b) as b,
    ):
        await asyncio.to_thread(wait_http_ok, f"http://127.0.0.1:{port_a}/healthz", a, log_a)
        await asyncio.to_thread(wait_http_ok, f"http://127.0.0.1:{port_b}/healthz", b, log_b)
        async with (
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_a}", timeout=10) as on_a,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_b}", timeout=10) as on_b,
        ):
            ada_id, ada = await _account(on_a, "ada")
            bob_id, bob = await _account(on_b, "bob")
            workspace = (
                await on_a.post("/api/v1/workspaces", json={"name": "Acme"}, headers=ada)
            ).json()["id"]
            invitation = await on_a.post(
                f"/api/v1/workspaces/{workspace}/invitations", json={"role": "member"}, headers=ada
            )
            accepted = await on_b.post(
                "/api/v1/invitations/accept",
                json={"token": invitation.json()["token"]},
                headers=bob,
            )
            assert accepted.status_code == 200, accepted.text
            conversations = await on_a.get(
                f"/api/v1/workspaces/{workspace}/conversations", headers=ada
            )
            general = conversations.json()[0]["id"]
            deadline = asyncio.get_running_loop().time() + 10
            while True:  # Bob joins #general through the outbox consumer
                members = (
                    await on_a.get(f"/api/v1/conversations/{general}/members", headers=ada)
                ).json()
                if (
                    bob_id in {m["user_id"] for m in members}
                    or asyncio.get_running_loop().time() > deadline
                ):
                    break
                await asyncio.sleep(0.05)

            bob_ws = await connect(
                f"ws://127.0.0.1:{port_b}/api/v1/realtime", additional_headers=bob
            )
            ada_ws = await connect(
                f"ws://127.0.0.1:{port_a}/api/v1/realtime", additional_headers=ada
            )
            try:
                bob_hello = await _frame(bob_ws, "hello")
                ada_hello = await _frame(ada_ws, "hello")
                assert bob_hello["node"] != ada_hello["node"]

                # Presence is the union of both processes: Ada (on A) sees Bob (on B) online,
                # in her hello or as a change right after it.
                if ada_hello["presence"].get(bob_id) != "online":
                    seen = await _frame(ada_ws, "presence", lambda f: f["user_id"] == bob_id)
                    assert seen["status"] == "online"

                # Sent on A (over the socket), received on B; sent on B (HTTP), received on A.
                await ada_ws.send(
                    json.dumps(
                        {"type": "send", "ref": 1, "conversation_id": general, "body": "from A"}
                    )
                )
                got = await _frame(bob_ws, "event", lambda f: f.get("event") == "message.created")
                assert got["data"]["message"]["body"] == "from A"
                sent = await on_b.post(
                    f"/api/v1/conversations/{general}/messages",
                    json={"body": "from B"},
                    headers=bob,
                )
                assert sent.status_code == 201
                got = await _frame(
                    ada_ws,
                    "event",
                    lambda f: (
                        f.get("event") == "message.created"
                        and f["data"]["message"]["body"] == "from B"
                    ),
                )
                # Typing crosses processes too.
                await bob_ws.send(json.dumps({"type": "typing", "conversation_id": general}))
                typing = await _frame(ada_ws, "typing")
                assert typing["user_id"] == bob_id

                # B dies: Bob's presence goes with it once B misses its heartbeats.
                kill9(b)
                offline = await _frame(
                    ada_ws, "presence", lambda f: f["user_id"] == bob_id, within=15
                )
                assert offline["status"] == "offline"
                presence = await on_a.get(f"/api/v1/workspaces/{workspace}/presence", headers=ada)
                assert bob_id not in presence.json()
                assert presence.json()[ada_id] == "online"
            finally:
                await ada_ws.close()
                await bob_ws.close()
