"""The send API against a running app, its worker and real provider servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.delivery.providers.webhook import WebhookReceiver
from tests.support.users import Account, create_api_key, create_workspace, register


@pytest.fixture
def settings_values(settings_values: dict[str, Any]) -> dict[str, Any]:
    return {
        **settings_values,
        # The providers of these tests listen on loopback, which the guard refuses by default.
        "outbound_allow_networks": ["127.0.0.0/8"],
        "outbound_timeout_seconds": 2.0,
        "delivery_backoff_base_seconds": 0.05,
        "delivery_backoff_max_seconds": 0.2,
        "delivery_max_attempts": 4,
        "delivery_circuit_failure_threshold": 3,
        "delivery_circuit_open_seconds": 30.0,
        # Scaled serves leave jobs to `tidings worker` processes; here the app runs one too.
        "serve_runs_worker": True,
    }


@dataclass
class Team:
    owner: Account
    workspace_id: str
    key: str  # messages:send

    @property
    def key_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture
async def team(client: httpx.AsyncClient) -> Team:
    owner = await register(client)
    workspace_id = await create_workspace(client, owner)
    key = await create_api_key(client, owner, workspace_id, ["messages:send"])
    return Team(owner, workspace_id, key)


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    async with WebhookReceiver() as server:
        yield server


async def add_webhook(
    client: httpx.AsyncClient,
    team: Team,
    receiver: WebhookReceiver,
    name: str = "hook",
    **extra: Any,
) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/workspaces/{team.workspace_id}/connectors",
        json={
            "type": "webhook",
            "name": name,
            "settings": {"url": receiver.url},
            "credentials": {"signing_secret": receiver.secret},
            **extra,
        },
        headers=team.owner.headers,
    )
    assert response.status_code == 201, response.text
    connector: dict[str, Any] = response.json()
    return connector
