"""`POST /api/v1/messages` and `/batch` through their hot routes answer as their FastAPI
routes do: the same app without hot routes is the reference, request by request."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.delivery.providers.webhook import WebhookReceiver
from tests.delivery.send.conftest import Team, add_webhook
from tests.support.helpers import on_own_database, serving
from tests.support.users import create_api_key, create_workspace, register
from tidings.app import create_app
from tidings.http.hot import is_hot
from tidings.settings import Settings

pytestmark = pytest.mark.profiles("embedded")

LATER = (datetime.now(UTC) + timedelta(days=1)).isoformat()


@pytest.fixture
async def teams(
    settings: Settings, tmp_path: Path, receiver: WebhookReceiver
) -> AsyncIterator[list[tuple[httpx.AsyncClient, Team]]]:
    """The app with its hot routes and the same app without them (a database of its own),
    each with a team that has a webhook connector named `hook`."""
    hot_app, plain_app = create_app(settings), create_app(on_own_database(settings, tmp_path))
    plain_app.router.routes[:] = [r for r in plain_app.router.routes if not is_hot(r)]
    assert [any(is_hot(r) for r in a.router.routes) for a in (hot_app, plain_app)] == [True, False]
    async with serving(hot_app) as hot, serving(plain_app) as plain:
        pairs = []
        for http in (hot, plain):
            owner = await register(http)
            workspace_id = await create_workspace(http, owner)
            key = await create_api_key(http, owner, workspace_id, ["messages:send"])
            team = Team(owner, workspace_id, key)
            await add_webhook(http, team, receiver)
            pairs.append((http, team))
        yield pairs


def _without_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_ids(v) for k, v in value.items() if k not in {"id", "request_id"}}
    if isinstance(value, list):
        return [_without_ids(v) for v in value]
    return value


def _shape(response: httpx.Response) -> tuple[Any, ...]:
    """What must be equal between the two apps (ids, request ids and times differ)."""
    body = _without_ids(response.json())
    headers = {
        name: response.headers.get(name)
        for name in ("content-type", "idempotent-replayed", "ratelimit-limit")
    }
    return response.status_code, headers, body


async def _both(
    teams: list[tuple[httpx.AsyncClient, Team]],
    body: dict[str, Any] | bytes,
    *,
    as_owner: bool = False,
    path: str = "/api/v1/messages",
    **headers: str,
) -> list[httpx.Response]:
    answers = []
    for http, team in teams:
        auth = team.owner.headers if as_owner else team.key_headers
        content = body if isinstance(body, bytes) else None
        answers.append(
            await http.post(
                path,
                json=None if content is not None else body,
                content=content,
                headers={**auth, "content-type": "application/json", **headers},
            )
        )
    return answers


def _hello(**extra: Any) -> dict[str, Any]:
    return {"to": "https://example.test/inbox", "connector": "hook", "send_at": LATER, **extra}


async def test_an_accept_and_its_replay_answer_as_the_fastapi_route(
    teams: list[tuple[httpx.AsyncClient, Team]],
) -> None:
    first = await _both(teams, _hello(content={"text": "hi"}), **{"Idempotency-Key": "k1"})
    assert _shape(first[0]) == _shape(first[1])
    assert first[0].status_code == 202
    assert first[0].json()["status"] == "queued"
    again = await _both(teams, _hello(content={"text": "hi"}), **{"Idempotency-Key": "k1"})
    assert _shape(again[0]) == _shape(again[1])
    assert again[0].headers["idempotent-replayed"] == "true"
    assert again[0].json()["id"] == first[0].json()["id"]


@pytest.mark.parametrize(
    ("body", "headers", "as_owner"),
    [
        (_hello(content={"text": "hi"}), {"Idempotency-Key": "k" * 256}, False),  # header
        (_hello(), {}, False),  # neither content nor template: the service's problem
        (_hello(content={"text": "hi"}, connector="nope"), {}, False),  # no such connector
        (_hello(content={"text": "hi"}), {}, True),  # a user names no workspace
        ({"connector": "hook", "content": {"text": "hi"}}, {}, False),  # no recipient
        (b'{"to": ', {}, False),  # not JSON
    ],
)
async def test_refusals_answer_as_the_fastapi_route(
    teams: list[tuple[httpx.AsyncClient, Team]],
    body: dict[str, Any] | bytes,
    headers: dict[str, str],
    as_owner: bool,
) -> None:
    answers = await _both(teams, body, as_owner=as_owner, **headers)
    assert _shape(answers[0]) == _shape(answers[1])
    assert 400 <= answers[0].status_code < 500


async def test_a_batch_and_its_replay_answer_as_the_fastapi_route(
    teams: list[tuple[httpx.AsyncClient, Team]],
) -> None:
    batch = {"messages": [_hello(content={"text": f"hi {i}"}) for i in range(3)]}
    first = await _both(teams, batch, path="/api/v1/messages/batch", **{"Idempotency-Key": "b1"})
    assert _shape(first[0]) == _shape(first[1])
    assert first[0].status_code == 202
    assert len(first[0].json()["messages"]) == 3
    again = await _both(teams, batch, path="/api/v1/messages/batch", **{"Idempotency-Key": "b1"})
    assert _shape(again[0]) == _shape(again[1])
    assert again[0].json() == first[0].json()


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"messages": [_hello(content={"text": "hi"})]}, {"Idempotency-Key": "k" * 256}),
        ({"messages": []}, {}),  # at least one
        ({"messages": [_hello(content={"text": "hi"}), _hello()]}, {}),  # the second has no content
        ({"messages": [_hello(content={"text": "hi"}, workspace_id=str(uuid.UUID(int=1)))]}, {}),
    ],
)
async def test_batch_refusals_answer_as_the_fastapi_route(
    teams: list[tuple[httpx.AsyncClient, Team]], body: dict[str, Any], headers: dict[str, str]
) -> None:
    answers = await _both(teams, body, path="/api/v1/messages/batch", **headers)
    assert _shape(answers[0]) == _shape(answers[1])
    assert 400 <= answers[0].status_code < 500
