"""A worker SIGKILLed in the middle of a send: the delivery completes afterwards, once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import TIDINGS_BIN, child_env, free_port
from tests.delivery.providers.base import Reply
from tests.delivery.providers.webhook import WebhookReceiver
from tests.support.helpers import eventually
from tests.support.processes import kill9, spawn, wait_http_ok

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def _setup(base: str, receiver: WebhookReceiver) -> tuple[dict[str, str], str]:
    """An account, a workspace, a sending key and a webhook connector, through the API."""
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        registered = await http.post(
            "/api/v1/auth/register",
            json={
                "email": "ops@example.com",
                "password": "correct horse battery",
                "display_name": "ops",
            },
        )
        assert registered.status_code == 201, registered.text
        owner = {"Authorization": f"Bearer {registered.json()['tokens']['access_token']}"}
        workspace = (
            await http.post("/api/v1/workspaces", json={"name": "Acme"}, headers=owner)
        ).json()
        key = await http.post(
            f"/api/v1/workspaces/{workspace['id']}/api-keys",
            json={"name": "app", "scopes": ["messages:send"]},
            headers=owner,
        )
        assert key.status_code == 201, key.text
        connector = await http.post(
            f"/api/v1/workspaces/{workspace['id']}/connectors",
            json={
                "type": "webhook",
                "name": "hook",
                "settings": {"url": receiver.url},
                "credentials": {"signing_secret": receiver.secret},
            },
            headers=owner,
        )
        assert connector.status_code == 201, connector.text
        return {"Authorization": f"Bearer {key.json()['key']}"}, workspace["id"]


async def test_a_worker_killed_mid_send_loses_nothing(
    profile: str, settings_values: dict[str, Any], tmp_path: Path
) -> None:
    env = child_env(
        {**settings_values, "outbound_allow_networks": None, "serve_runs_worker": None},
        TIDINGS_OUTBOUND_ALLOW_NETWORKS="127.0.0.0/8",
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    serve = [TIDINGS_BIN, "serve", "--port", str(port)]
    async with WebhookReceiver() as receiver:
        # The first delivery hangs at the provider; the worker dies while waiting for it.
        receiver.script(Reply.slow(60))
        with spawn(serve, env, tmp_path / "serve.log") as server:
            await asyncio.to_thread(
                wait_http_ok, f"{base}/healthz", server, tmp_path / "serve.log", 60
            )
            key, _ = await _setup(base, receiver)
            async with httpx.AsyncClient(base_url=base, timeout=10) as http:
                accepted = await http.post(
                    "/api/v1/messages",
                    json={"to": "ops", "connector": "hook", "content": {"text": "hello"}},
                    headers=key,
                )
                assert accepted.status_code == 202, accepted.text
                message_id = accepted.json()["id"]

            # Embedded: the worker is the serve process itself; scaled: a `tidings worker`.
            if profile == "embedded":
                await eventually(lambda: _received(receiver, 1), within=60)
                kill9(server)
                doomed = None
            else:
                with spawn([TIDINGS_BIN, "worker"], env, tmp_path / "worker1.log") as doomed:
                    await eventually(lambda: _received(receiver, 1), within=60)
                    kill9(doomed)
            assert len(receiver.received) == 1

            # A fresh process takes the job once its lease expires and sends it again.
            if profile == "embedded":
                restarted = spawn(serve, env, tmp_path / "serve2.log")
            else:
                restarted = spawn([TIDINGS_BIN, "worker"], env, tmp_path / "worker2.log")
            with restarted as second:
                if profile == "embedded":
                    await asyncio.to_thread(
                        wait_http_ok, f"{base}/healthz", second, tmp_path / "serve2.log", 60
                    )
                message = await _settled(base, key, message_id)
    assert message["status"] == "sent", message
    # The first run's `sending` mark is written while the provider is called, so a worker
    # killed that early may leave no count of its attempt: what matters is the second send.
    assert message["attempts"] in (1, 2)
    assert [a["outcome"] for a in message["attempt_log"]] == ["sent"]
    # At-least-once with the same delivery id: a provider that dedupes sees one message.
    assert len(receiver.received) == 2
    assert {r.headers["tidings-delivery-id"] for r in receiver.received} == {message_id}


async def _received(receiver: WebhookReceiver, count: int) -> bool:
    return len(receiver.received) >= count


async def _settled(base: str, key: dict[str, str], message_id: str) -> dict[str, Any]:
    result: dict[str, Any] = {}

    async def check() -> bool:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            response = await http.get(f"/api/v1/messages/{message_id}", headers=key)
        assert response.status_code == 200, response.text
        result.update(response.json())
        return result["status"] not in {"queued", "sending"}

    await eventually(check, within=40, interval=0.2)
    return result
