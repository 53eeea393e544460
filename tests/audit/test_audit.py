"""The audit log: recorded from the outbox once per event, filtered, paged, exported."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from sqlalchemy import func, select

from tests.support.helpers import eventually
from tests.support.users import PASSWORD, add_member, create_api_key, create_workspace, register
from tidings.audit.models import AuditEntry


async def _audit(
    client: httpx.AsyncClient, workspace: str, headers: dict[str, str], **params: Any
) -> dict[str, Any]:
    response = await client.get(
        f"/api/v1/workspaces/{workspace}/audit", params=params, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_workspace_actions_are_audited(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    member = await add_member(client, owner, workspace, "member")
    await client.patch(
        f"/api/v1/workspaces/{workspace}/members/{member.id}",
        json={"role": "agent"},
        headers=owner.headers,
    )
    await create_api_key(client, owner, workspace, ["messages:send"])
    key_id = (
        await client.get(f"/api/v1/workspaces/{workspace}/api-keys", headers=owner.headers)
    ).json()[0]["id"]
    await client.delete(f"/api/v1/workspaces/{workspace}/api-keys/{key_id}", headers=owner.headers)
    await client.delete(
        f"/api/v1/workspaces/{workspace}/members/{member.id}", headers=owner.headers
    )
    expected = [
        "WORKSPACE_CREATED",
        "MEMBER_JOINED",  # the creator, as owner
        "MEMBER_INVITED",
        "MEMBER_JOINED",
        "MEMBER_ROLE_CHANGED",
        "API_KEY_CREATED",
        "API_KEY_REVOKED",
        "MEMBER_REMOVED",
    ]

    async def recorded() -> list[str] | None:
        items = (await _audit(client, workspace, owner.headers, limit=50))["items"]
        actions = [item["action"] for item in reversed(items)]
        return actions if actions == expected else None

    await eventually(recorded)
    changed = (await _audit(client, workspace, owner.headers, action="MEMBER_ROLE_CHANGED"))[
        "items"
    ]
    assert changed[0]["details"] == {"from": "member", "to": "agent"}
    assert changed[0]["actor_id"] == owner.id
    assert changed[0]["target_id"] == member.id


async def test_denials_and_logins_are_audited(client: httpx.AsyncClient, app: FastAPI) -> None:
    owner = await register(client, "audited@example.com")
    workspace = await create_workspace(client, owner)
    guest = await add_member(client, owner, workspace, "guest")
    denied = await client.get(f"/api/v1/workspaces/{workspace}/members", headers=guest.headers)
    assert denied.status_code == 403
    await client.post(
        "/api/v1/auth/login", json={"email": "audited@example.com", "password": "wrong-password"}
    )
    await client.post(
        "/api/v1/auth/login", json={"email": "audited@example.com", "password": PASSWORD}
    )

    async def actions() -> set[str] | None:
        async with app.state.runtime.db.read() as session:
            found = set((await session.scalars(select(AuditEntry.action))).all())
        wanted = {"PERMISSION_DENIED", "LOGIN_FAILED", "LOGIN_SUCCEEDED", "USER_REGISTERED"}
        return found if wanted <= found else None

    await eventually(actions)
    items = (await _audit(client, workspace, owner.headers, action="PERMISSION_DENIED"))["items"]
    assert items[0]["actor_id"] == guest.id
    assert items[0]["details"] == {"action": "member.list"}


async def test_cursor_pagination_walks_every_entry_once(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    for index in range(7):
        await client.patch(
            f"/api/v1/workspaces/{workspace}", json={"name": f"Name {index}"}, headers=owner.headers
        )

    # workspace created, owner joined, seven renames
    async def nine() -> bool:
        return len((await _audit(client, workspace, owner.headers, limit=50))["items"]) == 9

    await eventually(nine)
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = await _audit(client, workspace, owner.headers, **params)
        seen.extend(item["id"] for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 9
    bad = await client.get(
        f"/api/v1/workspaces/{workspace}/audit",
        params={"cursor": "!!garbage"},
        headers=owner.headers,
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_cursor"
    # Well-formed but without a time zone: refused too, not a 500 from comparing times.
    naive = base64.urlsafe_b64encode(
        orjson.dumps(["2026-01-01T00:00:00", str(uuid.uuid4())])
    ).decode()
    bad = await client.get(
        f"/api/v1/workspaces/{workspace}/audit", params={"cursor": naive}, headers=owner.headers
    )
    assert bad.status_code == 400
    assert bad.json()["code"] == "invalid_cursor"


async def test_audit_rows_are_written_once_per_event(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await register(client)
    await create_workspace(client, owner)

    async def counts() -> tuple[int, int] | None:
        async with app.state.runtime.db.read() as session:
            rows = await session.scalar(select(func.count()).select_from(AuditEntry)) or 0
            distinct = (
                await session.scalar(select(func.count(func.distinct(AuditEntry.event_id)))) or 0
            )
        return (rows, distinct) if rows >= 2 else None

    rows, distinct = await eventually(counts)
    assert rows == distinct


async def test_instance_admin_exports_json_lines(client: httpx.AsyncClient) -> None:
    admin = await register(client)  # the first account
    other = await register(client)
    await create_workspace(client, other)

    async def exported() -> list[dict[str, Any]] | None:
        response = await client.get("/api/v1/admin/audit/export", headers=admin.headers)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [orjson.loads(line) for line in response.content.splitlines()]
        return lines if any(line["action"] == "WORKSPACE_CREATED" for line in lines) else None

    lines = await eventually(exported)
    assert {line["action"] for line in lines} >= {"USER_REGISTERED", "WORKSPACE_CREATED"}
    denied = await client.get("/api/v1/admin/audit/export", headers=other.headers)
    assert denied.status_code == 403
