"""Tokens from an external OpenID Connect issuer map to Tidings accounts end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.support.jwks_server import AUDIENCE, JwksServer, SigningKey
from tests.support.users import register
from tidings.app import create_app
from tidings.settings import Settings

pytestmark = pytest.mark.profiles("embedded")


@pytest.fixture
def provider() -> Iterator[tuple[JwksServer, SigningKey]]:
    key = SigningKey.rsa()
    server = JwksServer([key]).start()
    yield server, key
    server.stop()


async def _client(
    settings_values: dict[str, Any], server: JwksServer, auto: bool
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{
            **settings_values,
            "oidc_issuer": server.issuer,
            "oidc_audience": AUDIENCE,
            "oidc_auto_provision": auto,
        },
    )
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


async def test_auto_provisioned_account_and_stable_mapping(
    settings_values: dict[str, Any], provider: tuple[JwksServer, SigningKey], profile: str
) -> None:
    server, key = provider
    async for http in _client(settings_values, server, auto=True):
        token = key.sign(server.claims(email="Ext@Example.com", sub="idp|42"))
        first = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert first.status_code == 200, first.text
        assert first.json()["email"] == "ext@example.com"
        again = await http.get(
            "/api/v1/me",
            headers={
                "Authorization": f"Bearer {key.sign(server.claims(email='changed@example.com', sub='idp|42'))}"
            },
        )
        assert again.json()["id"] == first.json()["id"]  # mapped by (issuer, sub), not email
        created = await http.post(
            "/api/v1/workspaces", json={"name": "Ext"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert created.status_code == 201


async def test_without_auto_provisioning_unknown_subjects_are_refused(
    settings_values: dict[str, Any], provider: tuple[JwksServer, SigningKey], profile: str
) -> None:
    server, key = provider
    async for http in _client(settings_values, server, auto=False):
        token = key.sign(server.claims())
        response = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
        assert response.json()["code"] == "external_account_unknown"
        # Our own tokens keep working next to the external issuer.
        local = await register(http)
        assert (await http.get("/api/v1/me", headers=local.headers)).status_code == 200


async def test_unverified_email_is_not_provisioned_and_bad_tokens_are_401(
    settings_values: dict[str, Any], provider: tuple[JwksServer, SigningKey], profile: str
) -> None:
    server, key = provider
    async for http in _client(settings_values, server, auto=True):
        unverified = key.sign(server.claims(email_verified=False))
        response = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {unverified}"})
        assert response.status_code == 401
        expired = key.sign(server.claims(exp=1, iat=0))
        response = await http.get("/api/v1/me", headers={"Authorization": f"Bearer {expired}"})
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"
        assert expired not in response.text
