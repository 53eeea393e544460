"""Every error leaves as RFC 9457 problem+json with a stable code, and leaks no internals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter
from pydantic import BaseModel, Field

from tidings.app import create_app
from tidings.http.problems import Conflict, Forbidden, RateLimited, Unauthenticated
from tidings.settings import Settings

pytestmark = pytest.mark.profiles("embedded")

# A router of the shapes real domains use, to exercise the error machinery end to end.
router = APIRouter(prefix="/api/v1/probe")


class Widget(BaseModel):
    name: str = Field(min_length=1, max_length=20)
    count: int = Field(ge=0)


@router.post("/widgets", status_code=201)
async def create_widget(widget: Widget) -> Widget:
    return widget


@router.get("/conflict")
async def conflict() -> None:
    raise Conflict("The widget already exists.", widget_id="w1")


@router.get("/unauthenticated")
async def unauthenticated() -> None:
    raise Unauthenticated("A valid access token is required.")


@router.get("/forbidden")
async def forbidden() -> None:
    raise Forbidden("You may not do that here.")


@router.get("/limited")
async def limited() -> None:
    raise RateLimited(retry_after=7)


@router.get("/boom")
async def boom() -> None:
    secret_path = "/etc/tidings/internal-thing"
    raise RuntimeError(f"database password is hunter2 at {secret_path}")


@pytest.fixture
async def probe_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"max_body_bytes": 2048}), routers=[router])
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


def _problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].startswith("https://")
    assert body["title"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_validation_error_lists_each_field(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post("/api/v1/probe/widgets", json={"name": "", "count": -1})
    body = _problem(response, 400, "validation_failed")
    fields = {error["field"] for error in body["errors"]}
    assert fields == {"body.name", "body.count"}
    assert all(error["message"] and error["type"] for error in body["errors"])


async def test_malformed_json_is_a_validation_error(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post(
        "/api/v1/probe/widgets",
        content=b'{"name": ',
        headers={"content-type": "application/json"},
    )
    _problem(response, 400, "validation_failed")


async def test_happy_path_still_works(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post("/api/v1/probe/widgets", json={"name": "a", "count": 2})
    assert response.status_code == 201
    assert response.json() == {"name": "a", "count": 2}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/api/v1/probe/unauthenticated", 401, "unauthenticated"),
        ("/api/v1/probe/forbidden", 403, "forbidden"),
        ("/api/v1/probe/nothing-here", 404, "not_found"),
        ("/api/v1/probe/conflict", 409, "conflict"),
    ],
)
async def test_service_errors(
    probe_client: httpx.AsyncClient, path: str, status: int, code: str
) -> None:
    _problem(await probe_client.get(path), status, code)


async def test_conflict_carries_its_extensions(probe_client: httpx.AsyncClient) -> None:
    body = _problem(await probe_client.get("/api/v1/probe/conflict"), 409, "conflict")
    assert body["widget_id"] == "w1"
    assert body["detail"] == "The widget already exists."


async def test_method_not_allowed(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.delete("/api/v1/probe/widgets")
    _problem(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


async def test_rate_limited_has_retry_after(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.get("/api/v1/probe/limited")
    _problem(response, 429, "rate_limited")
    assert response.headers["retry-after"] == "7"


async def test_declared_oversized_body_is_413(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post(
        "/api/v1/probe/widgets",
        content=b"x" * 4096,
        headers={"content-type": "application/json"},
    )
    _problem(response, 413, "payload_too_large")


async def test_streamed_oversized_body_is_413(probe_client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * 512

    response = await probe_client.post(
        "/api/v1/probe/widgets", content=chunks(), headers={"content-type": "application/json"}
    )
    _problem(response, 413, "payload_too_large")


async def test_non_json_body_is_415(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post(
        "/api/v1/probe/widgets", content=b"name=a", headers={"content-type": "text/plain"}
    )
    _problem(response, 415, "unsupported_media_type")


async def test_500_hides_internals(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.get("/api/v1/probe/boom")
    body = _problem(response, 500, "internal_error")
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert "internal-thing" not in response.text
    assert set(body) == {"type", "title", "status", "code", "detail", "request_id"}


async def test_request_id_is_echoed_when_well_formed(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    response = await probe_client.get("/healthz", headers={"x-request-id": "bad id <script>"})
    assert response.headers["x-request-id"] != "bad id <script>"
    assert len(response.headers["x-request-id"]) == 32
