"""Every route x every kind of caller → the expected status, and no foreign data in any body.

The expectations below are written out by hand as the specification; they are deliberately not
derived from `tidings.identity.policy`, so a change to the policy or a route that forgets to ask
it shows up here.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI

from tests.support.users import Account, add_member, create_api_key, create_workspace, register
from tidings.identity.tokens import AccessTokens

SECRET_MARKER = "Zanzibar-Confidential"
ROLES = ["owner", "admin", "member", "agent", "guest"]


@dataclass
class World:
    workspace: str
    foreign_workspace: str
    users: dict[str, Account]
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    owner: Account | None = None


async def _build(client: httpx.AsyncClient, app: FastAPI) -> World:
    owner = await register(client)  # first account of the install: also instance admin
    workspace = await create_workspace(client, owner, f"{SECRET_MARKER} HQ")
    users = {"owner": owner}
    for role in ROLES[1:]:
        users[role] = await add_member(client, owner, workspace, role)
    outsider = await register(client)
    foreign = await create_workspace(client, outsider, "Elsewhere")
    world = World(workspace, foreign, users, owner=owner)
    world.headers = {role: account.headers for role, account in users.items()}
    world.headers["outsider"] = outsider.headers
    for name, (ws, creator, scopes) in {
        "key_admin": (workspace, owner, ["admin"]),
        "key_send": (workspace, owner, ["messages:send"]),
        "key_foreign": (foreign, outsider, ["admin"]),
        "key_revoked": (workspace, owner, ["admin"]),
    }.items():
        key = await create_api_key(client, creator, ws, scopes)
        world.headers[name] = {"Authorization": f"Bearer {key}"}
    keys = (
        await client.get(f"/api/v1/workspaces/{workspace}/api-keys", headers=owner.headers)
    ).json()
    revoked_id = keys[0]["id"]  # newest first: key_revoked
    assert (
        await client.delete(
            f"/api/v1/workspaces/{workspace}/api-keys/{revoked_id}", headers=owner.headers
        )
    ).status_code == 204
    world.headers["anonymous"] = {}
    identity = app.state.runtime.identity
    expired = AccessTokens(
        secret=identity.settings.jwt_secret,
        previous=[],
        issuer=identity.settings.jwt_issuer,
        lifetime=timedelta(minutes=-5),
    ).issue(uuid.UUID(owner.id), uuid.UUID(owner.session_id))[0]
    world.headers["expired"] = {"Authorization": f"Bearer {expired}"}
    head, payload, signature = owner.access_token.split(".")
    tampered = f"{head}.{payload[:-4]}AAAA.{signature}"
    world.headers["tampered"] = {"Authorization": f"Bearer {tampered}"}
    world.headers["garbage"] = {"Authorization": "Bearer not.a.token"}
    return world


Prepare = Callable[[httpx.AsyncClient, World], Awaitable[tuple[str, str, dict[str, object] | None]]]


def fixed(method: str, path: str, body: dict[str, object] | None = None) -> Prepare:
    async def prepare(
        _: httpx.AsyncClient, world: World
    ) -> tuple[str, str, dict[str, object] | None]:
        return method, path.format(ws=world.workspace, target=world.users["member"].id), body

    return prepare


def fresh_member_removal() -> Prepare:
    async def prepare(client: httpx.AsyncClient, world: World) -> tuple[str, str, None]:
        assert world.owner is not None
        victim = await add_member(client, world.owner, world.workspace, "member")
        return "DELETE", f"/api/v1/workspaces/{world.workspace}/members/{victim.id}", None

    return prepare


def fresh_invitation_revocation() -> Prepare:
    async def prepare(client: httpx.AsyncClient, world: World) -> tuple[str, str, None]:
        assert world.owner is not None
        invited = await client.post(
            f"/api/v1/workspaces/{world.workspace}/invitations",
            json={"role": "member"},
            headers=world.owner.headers,
        )
        return (
            "DELETE",
            f"/api/v1/workspaces/{world.workspace}/invitations/{invited.json()['id']}",
            None,
        )

    return prepare


def fresh_key_revocation() -> Prepare:
    async def prepare(client: httpx.AsyncClient, world: World) -> tuple[str, str, None]:
        assert world.owner is not None
        created = await client.post(
            f"/api/v1/workspaces/{world.workspace}/api-keys",
            json={"name": "victim", "scopes": ["messages:send"]},
            headers=world.owner.headers,
        )
        return (
            "DELETE",
            f"/api/v1/workspaces/{world.workspace}/api-keys/{created.json()['id']}",
            None,
        )

    return prepare


MANAGERS = {"owner", "admin"}
MEMBERS_NOT_GUEST = {"owner", "admin", "member", "agent"}


@dataclass(frozen=True)
class RouteCase:
    name: str
    prepare: Prepare
    allowed: frozenset[str]  # principals that succeed (roles and key kinds)
    workspace_scoped: bool = True


W = "/api/v1/workspaces/{ws}"
CASES = [
    RouteCase("get workspace", fixed("GET", W), frozenset({*ROLES, "key_admin", "key_send"})),
    RouteCase(
        "rename workspace", fixed("PATCH", W, {"name": f"{SECRET_MARKER} 2"}), frozenset(MANAGERS)
    ),
    RouteCase(
        "list members", fixed("GET", W + "/members"), frozenset({*MEMBERS_NOT_GUEST, "key_admin"})
    ),
    RouteCase(
        "change role",
        fixed("PATCH", W + "/members/{target}", {"role": "member"}),
        frozenset(MANAGERS),
    ),
    RouteCase("remove member", fresh_member_removal(), frozenset(MANAGERS)),
    RouteCase("invite", fixed("POST", W + "/invitations", {"role": "member"}), frozenset(MANAGERS)),
    RouteCase("list invitations", fixed("GET", W + "/invitations"), frozenset(MANAGERS)),
    RouteCase("revoke invitation", fresh_invitation_revocation(), frozenset(MANAGERS)),
    RouteCase(
        "create api key",
        fixed("POST", W + "/api-keys", {"name": "k", "scopes": ["messages:send"]}),
        frozenset(MANAGERS),
    ),
    RouteCase("list api keys", fixed("GET", W + "/api-keys"), frozenset(MANAGERS)),
    RouteCase("revoke api key", fresh_key_revocation(), frozenset(MANAGERS)),
    RouteCase("read audit", fixed("GET", W + "/audit"), frozenset({*MANAGERS, "key_admin"})),
    RouteCase("delete workspace", fixed("DELETE", W), frozenset({"owner"})),
    RouteCase(
        "me", fixed("GET", "/api/v1/me"), frozenset({*ROLES, "outsider"}), workspace_scoped=False
    ),
    RouteCase(
        "list workspaces",
        fixed("GET", "/api/v1/workspaces"),
        frozenset({*ROLES, "outsider", "key_admin", "key_send", "key_foreign"}),
        workspace_scoped=False,
    ),
    RouteCase(
        "export audit",
        fixed("GET", "/api/v1/admin/audit/export"),
        frozenset({"owner"}),
        workspace_scoped=False,
    ),
    RouteCase(
        "cluster nodes",
        fixed("GET", "/api/v1/system/nodes"),
        frozenset({"owner"}),
        workspace_scoped=False,
    ),
]
UNAUTHENTICATED = ["anonymous", "expired", "tampered", "garbage", "key_revoked"]
# The owner goes last: some routes (delete workspace) change what later callers would see.
CALLERS = [*UNAUTHENTICATED, "key_foreign", "outsider", "key_send", "key_admin", *reversed(ROLES)]


def expected_status(case: RouteCase, caller: str) -> int:
    if caller in UNAUTHENTICATED:
        return 401
    if caller in case.allowed:
        return 2
    if case.workspace_scoped and caller in {"outsider", "key_foreign"}:
        return 404
    return 403


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_authorization_matrix(
    client: httpx.AsyncClient, app: FastAPI, case: RouteCase
) -> None:
    world = await _build(client, app)
    failures = []
    for caller in CALLERS:
        method, url, body = await case.prepare(client, world)
        response = await client.request(method, url, json=body, headers=world.headers[caller])
        expected = expected_status(case, caller)
        got = response.status_code // 100 if expected == 2 else response.status_code
        if got != expected:
            failures.append(
                f"{caller}: expected {expected}, got {response.status_code} {response.text[:200]}"
            )
            continue
        if response.status_code >= 400:
            assert response.headers["content-type"] == "application/problem+json"
            for secret in (SECRET_MARKER, world.users["owner"].email, world.users["member"].email):
                assert secret not in response.text, (
                    f"{caller} saw {secret!r} in a {response.status_code}"
                )
        if caller in {"outsider", "key_foreign"} and response.status_code < 400:
            assert SECRET_MARKER not in response.text, f"{caller} saw the other workspace"
    assert not failures, "\n".join(failures)
