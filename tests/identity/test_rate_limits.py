"""Rate limits on the HTTP surface: login buckets, headers, and sharing across processes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from tests.support.messaging import create_channel, post_message
from tests.support.users import PASSWORD, create_workspace, register
from tidings.app import create_app
from tidings.settings import Settings


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


@pytest.fixture
def limited(settings_values: dict[str, Any]) -> Settings:
    # Slow refills (a token every 3 s and every 2 s): a login hashes a password, and on a
    # busy machine a faster bucket refills between the requests that should drain it.
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{**settings_values, "rate_limit_login": "3/9s", "rate_limit_user": "5/10s"},
    )


@pytest.fixture
async def limited_client(limited: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for http in _client(limited):
        yield http


async def _login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


async def test_login_allows_n_refuses_n_plus_1_then_recovers(
    limited_client: httpx.AsyncClient,
) -> None:
    await register(limited_client, "limited@example.com")
    statuses = [
        (await _login(limited_client, "limited@example.com", "wrong-password")).status_code
        for _ in range(3)
    ]
    assert statuses == [401, 401, 401]
    refused = await _login(limited_client, "limited@example.com")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 3
    assert refused.headers["ratelimit-limit"] == "3"
    assert refused.headers["ratelimit-remaining"] == "0"
    await asyncio.sleep(float(refused.headers["retry-after"]) + 0.1)
    assert (await _login(limited_client, "limited@example.com")).status_code == 200


async def test_authenticated_requests_carry_ratelimit_headers(
    limited_client: httpx.AsyncClient,
) -> None:
    account = await register(limited_client)
    responses = [await limited_client.get("/api/v1/me", headers=account.headers) for _ in range(6)]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert responses[0].headers["ratelimit-limit"] == "5"
    assert [int(r.headers["ratelimit-remaining"]) for r in responses[:5]] == [4, 3, 2, 1, 0]


async def test_every_answer_to_an_authenticated_caller_carries_its_ratelimit_headers(
    limited_client: httpx.AsyncClient,
) -> None:
    """A chat send answers with a Response of its own and a missing conversation with a
    problem; both report the caller's bucket, and a refusal reports it once."""
    account = await register(limited_client)
    workspace = await create_workspace(limited_client, account)
    room = (await create_channel(limited_client, account.headers, workspace))["id"]
    sent = await post_message(limited_client, account.headers, room, "hello")
    missing = await post_message(limited_client, account.headers, str(uuid.uuid4()), "hello")
    assert (await limited_client.get("/api/v1/me", headers=account.headers)).status_code == 200
    refused = await limited_client.get("/api/v1/me", headers=account.headers)
    assert [sent.status_code, missing.status_code, refused.status_code] == [201, 404, 429]
    assert [r.headers["ratelimit-remaining"] for r in (sent, missing, refused)] == ["2", "1", "0"]
    assert refused.headers.get_list("ratelimit-limit") == ["5"]
    assert refused.headers["retry-after"]


@pytest.mark.profiles("scaled")
async def test_buckets_are_shared_by_processes_on_redis(
    settings_values: dict[str, Any], profile: str
) -> None:
    # A slow refill: each login hashes a password, and on a busy machine a 3/2s bucket
    # would refill between them.
    limited = Settings(
        _env_file=None,  # type: ignore[call-arg]
        **{**settings_values, "rate_limit_login": "3/minute"},
    )
    clients = [_client(limited), _client(limited)]
    first, second = [await anext(c) for c in clients]
    try:
        await register(first, "shared@example.com")
        answers = []
        for index in range(4):
            http = first if index % 2 == 0 else second
            answers.append((await _login(http, "shared@example.com")).status_code)
        assert answers == [200, 200, 200, 429]
    finally:
        for c in clients:
            await c.aclose()
