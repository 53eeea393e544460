"""Accounts and sessions: registration, login, refresh rotation and reuse, logout, passwords."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from sqlalchemy import select, update

from tests.support.users import PASSWORD, register
from tidings.db.base import utcnow
from tidings.identity.models import RefreshToken, Session, User
from tidings.identity.tokens import digest


async def _db_user(app: FastAPI, email: str) -> User:
    async with app.state.runtime.db.read() as session:
        user = await session.scalar(select(User).where(User.email == email))
        assert user is not None
        return user


async def test_first_account_is_instance_admin_and_emails_are_normalised(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    first = await register(client, "  Ada@Example.COM ")
    second = await register(client, "bob@example.com")
    assert first.email == "ada@example.com"
    me_first = (await client.get("/api/v1/me", headers=first.headers)).json()
    me_second = (await client.get("/api/v1/me", headers=second.headers)).json()
    assert me_first["is_instance_admin"] is True
    assert me_second["is_instance_admin"] is False
    stored = await _db_user(app, "ada@example.com")
    assert stored.password_hash is not None
    assert stored.password_hash.startswith("$argon2id$")
    assert PASSWORD not in stored.password_hash


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"email": "not-an-email", "password": PASSWORD, "display_name": "x"},
            400,
            "invalid_email",
        ),
        (
            {"email": "c@example.com", "password": "short", "display_name": "x"},
            400,
            "weak_password",
        ),
        (
            {"email": "c@example.com", "password": "aaaaaaaaaaaa", "display_name": "x"},
            400,
            "weak_password",
        ),
        ({"email": "c@example.com", "password": PASSWORD}, 400, "validation_failed"),
        (
            {"email": "c@example.com", "password": PASSWORD, "display_name": "x", "admin": True},
            400,
            "validation_failed",
        ),
    ],
)
async def test_registration_refuses_bad_input(
    client: httpx.AsyncClient, body: dict[str, object], status: int, code: str
) -> None:
    response = await client.post("/api/v1/auth/register", json=body)
    assert response.status_code == status
    assert response.json()["code"] == code


async def test_duplicate_email_is_409(client: httpx.AsyncClient) -> None:
    await register(client, "dup@example.com")
    response = await client.post(
        "/api/v1/auth/register",
        json={"email": "DUP@example.com", "password": PASSWORD, "display_name": "d"},
    )
    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"


async def test_closed_registration_still_lets_the_first_account_in(
    settings_values: dict[str, object],
) -> None:
    from asgi_lifespan import LifespanManager

    from tidings.app import create_app
    from tidings.settings import Settings

    app = create_app(Settings(_env_file=None, **{**settings_values, "open_registration": False}))  # type: ignore[call-arg, arg-type]
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            await register(http, "founder@example.com")
            refused = await http.post(
                "/api/v1/auth/register",
                json={"email": "late@example.com", "password": PASSWORD, "display_name": "l"},
            )
    assert refused.status_code == 403
    assert refused.json()["code"] == "registration_closed"


async def test_login_gives_the_same_answer_for_unknown_email_and_wrong_password(
    client: httpx.AsyncClient,
) -> None:
    await register(client, "eve@example.com")
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": "eve@example.com", "password": "nope-nope-nope"}
    )
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": "nope-nope-nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["code"] == unknown.json()["code"] == "invalid_credentials"
    assert wrong.json()["detail"] == unknown.json()["detail"]
    good = await client.post(
        "/api/v1/auth/login", json={"email": " EVE@example.com", "password": PASSWORD}
    )
    assert good.status_code == 200
    tokens = good.json()
    assert tokens["token_type"] == "Bearer"
    assert 800 < tokens["expires_in"] <= 900  # 15 minutes
    assert tokens["refresh_token"].startswith("tdr_")
    assert "tidings_refresh" in good.headers["set-cookie"]
    assert "HttpOnly" in good.headers["set-cookie"]


async def test_login_rehashes_when_parameters_change(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await register(client, "old@example.com")
    weak = PasswordHasher(time_cost=2, memory_cost=19_456, parallelism=1)
    stronger_settings = app.state.runtime.identity.hashing
    # Simulate a hash made under older, cheaper parameters.
    async with app.state.runtime.db.transaction() as session:
        await session.execute(
            update(User)
            .where(User.email == "old@example.com")
            .values(
                password_hash=PasswordHasher(time_cost=2, memory_cost=8, parallelism=1).hash(
                    PASSWORD
                )
            )
        )
    assert stronger_settings is not None
    response = await client.post(
        "/api/v1/auth/login", json={"email": "old@example.com", "password": PASSWORD}
    )
    assert response.status_code == 200
    stored = (await _db_user(app, "old@example.com")).password_hash
    assert stored is not None
    assert not weak.check_needs_rehash(stored)  # now at the configured parameters


async def test_refresh_rotates_and_the_old_token_stops_working(client: httpx.AsyncClient) -> None:
    account = await register(client)
    first = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert first.status_code == 200
    rotated = first.json()
    assert rotated["refresh_token"] != account.refresh_token
    assert rotated["session_id"] == account.session_id
    again = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert again.status_code == 401
    assert again.json()["code"] == "refresh_token_used"  # within the grace window: no revocation
    still = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}
    )
    assert still.status_code == 200


async def test_reuse_after_grace_revokes_the_whole_family(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    account = await register(client)
    rotated = (
        await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    ).json()
    # The stolen old token shows up a minute after it was rotated away.
    async with app.state.runtime.db.transaction() as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == digest(account.refresh_token))
            .values(used_at=utcnow() - timedelta(minutes=1))
        )
    reuse = await client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
    assert reuse.status_code == 401
    assert reuse.json()["code"] == "refresh_token_reused"
    # The legitimate holder of the newest token is signed out too.
    newest = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}
    )
    assert newest.status_code == 401
    me = await client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {rotated['access_token']}"}
    )
    assert me.status_code == 401
    assert me.json()["code"] == "session_ended"


async def test_parallel_refreshes_with_one_token_exactly_one_wins(
    client: httpx.AsyncClient,
) -> None:
    account = await register(client)
    responses = await asyncio.gather(
        *(
            client.post("/api/v1/auth/refresh", json={"refresh_token": account.refresh_token})
            for _ in range(8)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] + [401] * 7


async def test_refresh_from_the_cookie(client: httpx.AsyncClient) -> None:
    await register(client, "cookie@example.com")
    login = await client.post(
        "/api/v1/auth/login", json={"email": "cookie@example.com", "password": PASSWORD}
    )
    client.cookies.set("tidings_refresh", login.json()["refresh_token"], path="/api/v1/auth")
    response = await client.post("/api/v1/auth/refresh")
    client.cookies.clear()
    assert response.status_code == 200


async def test_absolute_lifetime_ends_the_family(client: httpx.AsyncClient, app: FastAPI) -> None:
    account = await register(client)
    async with app.state.runtime.db.transaction() as session:
        await session.execute(
            update(Session)
            .where(Session.id == uuid.UUID(account.session_id))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    response = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_refresh_token"


async def test_idle_refresh_token_expires(client: httpx.AsyncClient, app: FastAPI) -> None:
    account = await register(client)
    async with app.state.runtime.db.transaction() as session:
        await session.execute(
            update(RefreshToken)
            .where(RefreshToken.token_hash == digest(account.refresh_token))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    response = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert response.status_code == 401


async def test_logout_ends_the_session_for_both_tokens(client: httpx.AsyncClient) -> None:
    account = await register(client)
    assert (await client.post("/api/v1/auth/logout", headers=account.headers)).status_code == 204
    me = await client.get("/api/v1/me", headers=account.headers)
    assert me.status_code == 401
    assert me.json()["code"] == "session_ended"
    refresh = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": account.refresh_token}
    )
    assert refresh.status_code == 401


async def test_password_change_ends_every_session(client: httpx.AsyncClient) -> None:
    account = await register(client, "pw@example.com")
    other_device = (
        await client.post(
            "/api/v1/auth/login", json={"email": "pw@example.com", "password": PASSWORD}
        )
    ).json()
    wrong = await client.post(
        "/api/v1/me/password",
        json={"current_password": "not it at all", "new_password": "a brand new passphrase"},
        headers=account.headers,
    )
    assert wrong.status_code == 403
    changed = await client.post(
        "/api/v1/me/password",
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
        headers=account.headers,
    )
    assert changed.status_code == 200
    for old in (account.access_token, other_device["access_token"]):
        response = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {old}"})
        assert response.status_code == 401
    fresh = {"Authorization": f"Bearer {changed.json()['access_token']}"}
    assert (await client.get("/api/v1/me", headers=fresh)).status_code == 200
    old_login = await client.post(
        "/api/v1/auth/login", json={"email": "pw@example.com", "password": PASSWORD}
    )
    assert old_login.status_code == 401


async def test_list_and_revoke_own_sessions(client: httpx.AsyncClient) -> None:
    account = await register(client, "multi@example.com")
    second = (
        await client.post(
            "/api/v1/auth/login",
            json={"email": "multi@example.com", "password": PASSWORD},
            headers={"user-agent": "phone"},
        )
    ).json()
    sessions = (await client.get("/api/v1/me/sessions", headers=account.headers)).json()
    assert len(sessions) == 2
    assert [s["current"] for s in sessions].count(True) == 1
    revoke = await client.delete(
        f"/api/v1/me/sessions/{second['session_id']}", headers=account.headers
    )
    assert revoke.status_code == 204
    phone = {"Authorization": f"Bearer {second['access_token']}"}
    assert (await client.get("/api/v1/me", headers=phone)).status_code == 401
    # Someone else's session id is simply not found.
    stranger = await register(client)
    foreign = await client.delete(
        f"/api/v1/me/sessions/{account.session_id}", headers=stranger.headers
    )
    assert foreign.status_code == 404
