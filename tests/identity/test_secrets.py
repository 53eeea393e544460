"""No password, token or key is stored in plaintext or written to the logs."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.support.users import PASSWORD, create_api_key, create_workspace, register
from tidings.infra.logging import configure_logging

TABLES = [
    "users",
    "sessions",
    "refresh_tokens",
    "invitations",
    "api_keys",
    "events",
    "audit_log",
    "jobs",
]


async def test_secrets_never_reach_the_database_or_the_logs(
    client: httpx.AsyncClient, app: FastAPI, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("debug", "json")
    try:
        owner = await register(client, "secretive@example.com")
        workspace = await create_workspace(client, owner)
        key = await create_api_key(client, owner, workspace, ["admin"])
        invitation = (
            await client.post(
                f"/api/v1/workspaces/{workspace}/invitations", json={}, headers=owner.headers
            )
        ).json()["token"]
        refreshed = (
            await client.post("/api/v1/auth/refresh", json={"refresh_token": owner.refresh_token})
        ).json()
        await client.post(
            "/api/v1/auth/login",
            json={"email": "secretive@example.com", "password": "Wrong-" + PASSWORD},
        )
        await client.get(
            f"/api/v1/workspaces/{workspace}", headers={"Authorization": f"Bearer {key}"}
        )
        await client.get(
            "/api/v1/me", headers={"Authorization": "Bearer tdk_0123456789abcdef_guess"}
        )
    finally:
        logging.getLogger().handlers.clear()
    secrets = {
        "password": PASSWORD,
        "refresh": owner.refresh_token,
        "rotated refresh": refreshed["refresh_token"],
        "access": owner.access_token,
        # tdk_<hex public id>_<secret>: the secret itself may contain "_".
        "api key secret": key.split("_", 2)[2],
        "invitation": invitation,
    }
    logs = capsys.readouterr().out
    assert '"event": "request"' in logs  # the log was really captured
    async with app.state.runtime.db.read() as session:
        rows = [
            str((await session.execute(text(f"SELECT * FROM {table}"))).all())  # noqa: S608 - fixed names
            for table in TABLES
        ]
    dump = "\n".join(rows)
    for name, value in secrets.items():
        assert value not in logs, f"{name} appears in the logs"
        if name != "access":  # access tokens are never stored at all
            assert value not in dump, f"{name} is stored in plaintext"
