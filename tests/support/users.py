"""Creating accounts and workspaces through the real API, as a client would."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import httpx

PASSWORD = "correct horse battery staple"
_counter = itertools.count(1)


@dataclass
class Account:
    id: str
    email: str
    access_token: str
    refresh_token: str
    session_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def register(
    client: httpx.AsyncClient, email: str | None = None, password: str = PASSWORD
) -> Account:
    email = email or f"user{next(_counter)}@example.com"
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": email, "password": password, "display_name": email.split("@")[0]},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return Account(
        id=body["user"]["id"],
        email=body["user"]["email"],
        access_token=body["tokens"]["access_token"],
        refresh_token=body["tokens"]["refresh_token"],
        session_id=body["tokens"]["session_id"],
    )


async def create_workspace(client: httpx.AsyncClient, owner: Account, name: str = "Acme") -> str:
    response = await client.post("/api/v1/workspaces", json={"name": name}, headers=owner.headers)
    assert response.status_code == 201, response.text
    workspace_id: str = response.json()["id"]
    return workspace_id


async def add_member(
    client: httpx.AsyncClient, owner: Account, workspace_id: str, role: str
) -> Account:
    """Invite a new account with `role` and accept it (the owner must be allowed to invite)."""
    member = await register(client)
    invited = await client.post(
        f"/api/v1/workspaces/{workspace_id}/invitations",
        json={"role": role},
        headers=owner.headers,
    )
    assert invited.status_code == 201, invited.text
    accepted = await client.post(
        "/api/v1/invitations/accept",
        json={"token": invited.json()["token"]},
        headers=member.headers,
    )
    assert accepted.status_code == 200, accepted.text
    return member


async def create_api_key(
    client: httpx.AsyncClient, owner: Account, workspace_id: str, scopes: list[str]
) -> str:
    response = await client.post(
        f"/api/v1/workspaces/{workspace_id}/api-keys",
        json={"name": "ci", "scopes": scopes},
        headers=owner.headers,
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key
