"""Hot routes: a valid body is answered without FastAPI, anything else exactly as the FastAPI
route of the same path answers it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.support.helpers import on_own_database, serving
from tests.support.users import register
from tidings.app import create_app
from tidings.http.hot import add_hot_post
from tidings.identity.deps import PrincipalDep, authenticate
from tidings.settings import Settings

pytestmark = pytest.mark.profiles("embedded")

router = APIRouter(prefix="/api/v1/probe")
PATH = "/api/v1/probe/boxes/{box_id}/widgets"


class Widget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=20)
    count: int = Field(ge=0)


@router.post("/boxes/{box_id}/widgets", status_code=201)
async def add_widget(box_id: uuid.UUID, widget: Widget, principal: PrincipalDep) -> dict[str, Any]:
    return {"box": str(box_id), **widget.model_dump(), "by": "fastapi"}


@router.get("/boxes/{box_id}/widgets")
async def list_widgets(box_id: uuid.UUID) -> list[str]:
    return [str(box_id)]


async def add_widget_hot(request: Request, widget: Widget) -> Response:
    await authenticate(request)
    box: uuid.UUID = request.path_params["box_id"]
    return JSONResponse({"box": str(box), **widget.model_dump(), "by": "hot"}, status_code=201)


@pytest.fixture
async def clients(
    settings: Settings, tmp_path: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """The probe app with the hot route, and the same app without it (a database of its own)."""
    hot_app, plain_app = (
        create_app(settings, routers=[router]),
        create_app(on_own_database(settings, tmp_path / "plain"), routers=[router]),
    )
    add_hot_post(hot_app, "/api/v1/probe/boxes/{box_id:uuid}/widgets", Widget, add_widget_hot)
    async with serving(hot_app) as hot, serving(plain_app) as plain:
        yield hot, plain


def _comparable(response: httpx.Response) -> tuple[int, str, Any]:
    body = response.json()
    if isinstance(body, dict):  # what differs between two requests of the same kind
        body.pop("request_id", None)
    return response.status_code, response.headers["content-type"], body


async def test_a_valid_body_is_answered_by_the_hot_route(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    hot, plain = clients
    box = uuid.uuid4()
    answers = [
        await http.post(
            PATH.format(box_id=box),
            json={"name": "a", "count": 2},
            headers=(await register(http)).headers,
        )
        for http in (hot, plain)
    ]
    assert [(a.status_code, a.json()["by"]) for a in answers] == [(201, "hot"), (201, "fastapi")]
    assert answers[0].json()["box"] == answers[1].json()["box"] == str(box)
    # The outer middleware still runs: a request id and the caller's rate limit.
    for answer in answers:
        assert answer.headers["x-request-id"]
        assert answer.headers["ratelimit-limit"]


@pytest.mark.parametrize(
    ("content", "path"),
    [
        (b'{"name": "", "count": -1}', None),
        (b'{"name": "a", "count": 1, "colour": "red"}', None),
        (b'{"name": ', None),
        (b"[]", None),
        (b"", None),
        (b'{"name": "a", "count": 1}', "/api/v1/probe/boxes/not-a-uuid/widgets"),
    ],
)
async def test_anything_else_is_answered_as_the_fastapi_route_answers_it(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient], content: bytes, path: str | None
) -> None:
    hot, plain = clients
    url = path or PATH.format(box_id=uuid.UUID(int=5))
    answers = []
    for http in (hot, plain):
        headers = {**(await register(http)).headers, "content-type": "application/json"}
        answers.append(_comparable(await http.post(url, content=content, headers=headers)))
    assert answers[0] == answers[1]
    assert answers[0][0] == 400


async def test_an_invalid_body_is_checked_after_the_caller_as_fastapi_does(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    hot, plain = clients
    answers = [
        _comparable(await http.post(PATH.format(box_id=uuid.UUID(int=5)), json={"name": ""}))
        for http in (hot, plain)
    ]
    assert answers[0] == answers[1]
    assert answers[0][0] == 401


async def test_a_problem_raised_by_the_hot_handler_is_answered_as_the_route_would(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    """A valid body without a caller: the hot handler itself raises (401), and the app's
    problem handlers answer it as they answer the FastAPI route's."""
    hot, plain = clients
    answers = [
        await http.post(PATH.format(box_id=uuid.UUID(int=5)), json={"name": "a", "count": 1})
        for http in (hot, plain)
    ]
    assert _comparable(answers[0]) == _comparable(answers[1])
    assert answers[0].status_code == 401
    assert answers[0].headers["www-authenticate"] == answers[1].headers["www-authenticate"]
    assert answers[0].headers["ratelimit-limit"] == answers[1].headers["ratelimit-limit"]


async def test_other_methods_of_the_path_reach_their_routes(
    clients: tuple[httpx.AsyncClient, httpx.AsyncClient],
) -> None:
    hot, plain = clients
    box = uuid.UUID(int=9)
    for http in (hot, plain):
        assert (await http.get(PATH.format(box_id=box))).json() == [str(box)]
    deletes = [_comparable(await http.delete(PATH.format(box_id=box))) for http in (hot, plain)]
    assert deletes[0] == deletes[1]
    assert deletes[0][0] == 405


async def test_the_hot_route_is_named_by_the_fastapi_template(settings: Settings) -> None:
    app = create_app(settings, routers=[router])
    add_hot_post(app, "/api/v1/probe/boxes/{box_id:uuid}/widgets", Widget, add_widget_hot)
    first = app.router.routes[0]
    assert getattr(first, "path", None) == PATH
    assert PATH in app.openapi()["paths"]
