"""Operational endpoints, metrics, OpenAPI, CORS and log hygiene."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from tests.support.helpers import eventually
from tidings.app import create_app
from tidings.infra.logging import configure_logging, get_logger
from tidings.infra.redis import redis_client
from tidings.jobs import service
from tidings.settings import Settings


async def test_healthz_and_readyz(client: httpx.AsyncClient, profile: str) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    expected = (
        {"database": "ok"}
        if profile == "embedded"
        else {
            "database": "ok",
            "redis": "ok",
            "broker": "ok",
        }
    )
    assert ready.json() == {"status": "ready", "checks": expected}


@pytest.mark.profiles("scaled")
async def test_readyz_is_503_when_redis_is_unreachable(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    runtime = app.state.runtime
    healthy = runtime.redis
    runtime.redis = redis_client("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        response = await client.get("/readyz")
    finally:
        await runtime.redis.aclose()
        runtime.redis = healthy
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "not_ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error:")


@pytest.mark.profiles("embedded")
async def test_metrics_expose_requests_jobs_and_outbox(
    app: FastAPI, client: httpx.AsyncClient, profile: str
) -> None:
    await client.get("/healthz")
    runtime = app.state.runtime
    async with runtime.db.transaction() as session:
        await service.enqueue(session, "maintenance.purge")

    async def scraped() -> str | None:
        text = (await client.get("/metrics")).text
        return (
            text
            if 'tidings_jobs_total{name="maintenance.purge",outcome="succeeded"}' in text
            else None
        )

    text = await eventually(scraped)
    assert 'tidings_http_request_duration_seconds_count{method="GET",route="/healthz"' in text
    assert "tidings_outbox_lag_seconds" in text
    assert "tidings_jobs_queue_depth" in text
    assert "tidings_job_start_delay_seconds_bucket" in text


@pytest.mark.profiles("embedded")
async def test_openapi_and_docs(client: httpx.AsyncClient, profile: str) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "Tidings"
    assert "/readyz" in spec["paths"]
    # The chat send answers its JSON without FastAPI's serialisation; its schema stays documented.
    created = spec["paths"]["/api/v1/conversations/{conversation_id}/messages"]["post"]
    assert created["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "MessageOut"
    )
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


@pytest.mark.profiles("embedded")
async def test_cors_allows_only_configured_origins(settings: Settings, profile: str) -> None:
    app = create_app(settings.model_copy(update={"cors_origins": ["https://app.example"]}))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            preflight = {"access-control-request-method": "POST"}
            allowed = await http.options(
                "/healthz", headers={"origin": "https://app.example", **preflight}
            )
            denied = await http.options(
                "/healthz", headers={"origin": "https://evil.example", **preflight}
            )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in denied.headers


def test_logs_are_json_and_secrets_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    try:
        get_logger("test").info(
            "connecting",
            password="hunter2",
            api_key="tk_live_abc",
            authorization="Bearer eyJhbGciOi",
            url="postgresql://tidings:s3cr3t@db/tidings",
            detail="plain",
        )
        logging.getLogger("third.party").warning("dsn=%s", "redis://:redispw@cache:6379/0")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    first: dict[str, Any] = lines[0]
    assert first["event"] == "connecting"
    assert first["password"] == first["api_key"] == first["authorization"] == "[redacted]"
    assert first["url"] == "postgresql://tidings:***@db/tidings"
    assert first["detail"] == "plain"
    text = "\n".join(json.dumps(line) for line in lines)
    for secret in ("hunter2", "tk_live_abc", "eyJhbGciOi", "s3cr3t", "redispw"):
        assert secret not in text
