"""Workspaces, roles and invitations: the rules a team relies on."""

from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI
from sqlalchemy import update

from tests.support.users import add_member, create_workspace, register
from tidings.db.base import utcnow
from tidings.identity.models import Invitation


async def test_create_list_rename_delete(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner, "  Acme   Corp ")
    listed = (await client.get("/api/v1/workspaces", headers=owner.headers)).json()
    assert [(w["name"], w["role"]) for w in listed] == [("Acme Corp", "owner")]
    renamed = await client.patch(
        f"/api/v1/workspaces/{workspace}", json={"name": "Acme Inc"}, headers=owner.headers
    )
    assert renamed.json()["name"] == "Acme Inc"
    bad = await client.patch(
        f"/api/v1/workspaces/{workspace}", json={"name": "   "}, headers=owner.headers
    )
    assert bad.status_code == 400
    assert (
        await client.delete(f"/api/v1/workspaces/{workspace}", headers=owner.headers)
    ).status_code == 204
    assert (
        await client.get(f"/api/v1/workspaces/{workspace}", headers=owner.headers)
    ).status_code == 404
    assert (await client.get("/api/v1/workspaces", headers=owner.headers)).json() == []


async def test_invitation_for_an_email_only_works_for_that_account(
    client: httpx.AsyncClient,
) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    invited = await client.post(
        f"/api/v1/workspaces/{workspace}/invitations",
        json={"role": "member", "email": "Grace@Example.com"},
        headers=owner.headers,
    )
    assert invited.status_code == 201
    token = invited.json()["token"]
    assert token.startswith("tdi_")
    intruder = await register(client)
    refused = await client.post(
        "/api/v1/invitations/accept", json={"token": token}, headers=intruder.headers
    )
    assert refused.status_code == 404
    grace = await register(client, "grace@example.com")
    accepted = await client.post(
        "/api/v1/invitations/accept", json={"token": token}, headers=grace.headers
    )
    assert accepted.status_code == 200
    assert accepted.json()["id"] == workspace
    again = await client.post(
        "/api/v1/invitations/accept", json={"token": token}, headers=grace.headers
    )
    assert again.status_code == 404  # single use
    members = (
        await client.get(f"/api/v1/workspaces/{workspace}/members", headers=owner.headers)
    ).json()
    assert {m["email"]: m["role"] for m in members} == {
        owner.email: "owner",
        "grace@example.com": "member",
    }


async def test_expired_and_revoked_invitations_do_not_work(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    expired = (
        await client.post(
            f"/api/v1/workspaces/{workspace}/invitations", json={}, headers=owner.headers
        )
    ).json()
    revoked = (
        await client.post(
            f"/api/v1/workspaces/{workspace}/invitations", json={}, headers=owner.headers
        )
    ).json()
    async with app.state.runtime.db.transaction() as session:
        await session.execute(
            update(Invitation)
            .where(Invitation.id == uuid.UUID(expired["id"]))
            .values(expires_at=utcnow())
        )
    await client.delete(
        f"/api/v1/workspaces/{workspace}/invitations/{revoked['id']}", headers=owner.headers
    )
    joiner = await register(client)
    for invitation in (expired, revoked):
        response = await client.post(
            "/api/v1/invitations/accept",
            json={"token": invitation["token"]},
            headers=joiner.headers,
        )
        assert response.status_code == 404
    assert (
        await client.get(f"/api/v1/workspaces/{workspace}/invitations", headers=owner.headers)
    ).json() == []


async def test_admins_cannot_make_or_touch_owners(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    admin = await add_member(client, owner, workspace, "admin")
    member = await add_member(client, owner, workspace, "member")
    promote = await client.patch(
        f"/api/v1/workspaces/{workspace}/members/{member.id}",
        json={"role": "owner"},
        headers=admin.headers,
    )
    assert promote.status_code == 403
    demote_owner = await client.patch(
        f"/api/v1/workspaces/{workspace}/members/{owner.id}",
        json={"role": "member"},
        headers=admin.headers,
    )
    assert demote_owner.status_code == 403
    invite_owner = await client.post(
        f"/api/v1/workspaces/{workspace}/invitations", json={"role": "owner"}, headers=admin.headers
    )
    assert invite_owner.status_code == 403
    to_agent = await client.patch(
        f"/api/v1/workspaces/{workspace}/members/{member.id}",
        json={"role": "agent"},
        headers=admin.headers,
    )
    assert to_agent.status_code == 200
    assert to_agent.json()["role"] == "agent"
    bad_role = await client.patch(
        f"/api/v1/workspaces/{workspace}/members/{member.id}",
        json={"role": "emperor"},
        headers=owner.headers,
    )
    assert bad_role.status_code == 400


async def test_the_last_owner_cannot_leave_or_be_demoted(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    leave = await client.post(f"/api/v1/workspaces/{workspace}/leave", headers=owner.headers)
    assert leave.status_code == 409
    assert leave.json()["code"] == "last_owner"
    demote = await client.patch(
        f"/api/v1/workspaces/{workspace}/members/{owner.id}",
        json={"role": "admin"},
        headers=owner.headers,
    )
    assert demote.status_code == 409
    second = await add_member(client, owner, workspace, "owner")
    assert (
        await client.post(f"/api/v1/workspaces/{workspace}/leave", headers=owner.headers)
    ).status_code == 204
    assert (
        await client.get(f"/api/v1/workspaces/{workspace}", headers=owner.headers)
    ).status_code == 404
    assert (
        await client.get(f"/api/v1/workspaces/{workspace}", headers=second.headers)
    ).status_code == 200


async def test_removed_member_loses_access(client: httpx.AsyncClient) -> None:
    owner = await register(client)
    workspace = await create_workspace(client, owner)
    member = await add_member(client, owner, workspace, "member")
    removed = await client.delete(
        f"/api/v1/workspaces/{workspace}/members/{member.id}", headers=owner.headers
    )
    assert removed.status_code == 204
    assert (
        await client.get(f"/api/v1/workspaces/{workspace}", headers=member.headers)
    ).status_code == 404
    gone = await client.delete(
        f"/api/v1/workspaces/{workspace}/members/{member.id}", headers=owner.headers
    )
    assert gone.status_code == 404
