"""The busiest POST routes, answered without FastAPI's per-request machinery.

A chat send through FastAPI spent about 100 µs of its ~400 in the framework: dependency solving,
two exit stacks per request, the body parsed to a dict then validated. A hot route stands in
front of a FastAPI route of the same path and answers a request whose body validates as the
route's model; anything else (a body that does not validate, a path that does not convert) goes
to the FastAPI route, so every error is answered exactly as that route documents it, and the
OpenAPI schema stays that route's.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Receive, Scope, Send

from tidings.http.middleware import replay_body

BodyT = TypeVar("BodyT", bound=BaseModel)
# None: not for the hot route (say, a header the FastAPI route would refuse); only before the
# handler has done anything, since the FastAPI route then handles the request from the start.
HotHandler = Callable[[Request, BodyT], Awaitable[Response | None]]

_CONVERTOR = re.compile(r":\w+}")


class _HotEndpoint(Generic[BodyT]):
    def __init__(self, model: type[BodyT], handle: HotHandler[BodyT], fallback: APIRoute) -> None:
        self.model = model
        self.handle = handle
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        raw = await request.body()
        try:
            body = self.model.model_validate_json(raw)
        except ValidationError:
            await self._delegate(scope, receive, send, raw)
            return
        response = await self.handle(request, body)
        if response is None:
            await self._delegate(scope, receive, send, raw)
            return
        await response(scope, receive, send)

    async def _delegate(self, scope: Scope, receive: Receive, send: Send, raw: bytes) -> None:
        match, child_scope = self.fallback.matches(scope)
        if match is not Match.FULL:  # the two paths are the same: a bug, not a request
            raise RuntimeError(f"{self.fallback.path} does not match {scope['path']}")
        await self.fallback.handle({**scope, **child_scope}, replay_body(raw, receive), send)


def is_hot(route: BaseRoute) -> bool:
    """Whether `route` is a hot route (`add_hot_post`)."""
    return isinstance(route, Route) and isinstance(route.app, _HotEndpoint)


def add_hot_post(app: FastAPI, path: str, model: type[BodyT], handle: HotHandler[BodyT]) -> None:
    """Answer `POST path` (with Starlette convertors, e.g. `{id:uuid}`) with `handle(request,
    body)` when the body validates as `model` and `handle` takes it, in front of the app's
    FastAPI route of the same path (which must exist, and answers everything else)."""
    plain = _CONVERTOR.sub("}", path)
    fallback = next(
        (
            route
            for route in app.router.routes
            if isinstance(route, APIRoute)
            and route.path == plain
            and "POST" in (route.methods or ())
        ),
        None,
    )
    if fallback is None:
        raise LookupError(f"no FastAPI route answers POST {plain}: a hot route needs one")
    hot = Route(path, _HotEndpoint(model, handle, fallback), methods=["POST"])
    # Metrics and logs name the route by its template: the FastAPI route's, for both.
    hot.path = fallback.path
    app.router.routes.insert(0, hot)
