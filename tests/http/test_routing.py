"""Route order: routes are matched one by one, the busiest first, so no route may shadow one
registered after it."""

from __future__ import annotations

import re
import uuid

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import compile_path

from tidings.delivery.routes import send
from tidings.messaging.routes import messages
from tidings.system.routes import router as system_router

pytestmark = pytest.mark.profiles("embedded")


def _example(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.UUID(int=7)), path)


async def test_no_route_is_shadowed_by_an_earlier_one(app: FastAPI) -> None:
    routes = [(r.path, frozenset(r.methods)) for r in app.routes if isinstance(r, APIRoute)]
    shadowed = [
        (path, earlier)
        for index, (path, methods) in enumerate(routes)
        for earlier, earlier_methods in routes[:index]
        if methods & earlier_methods and compile_path(earlier)[0].match(_example(path))
    ]
    assert shadowed == []


async def test_the_busiest_routes_are_matched_first(app: FastAPI) -> None:
    # Only the system's probes and FastAPI's own pages (the schema, the docs) come before the
    # send API and a chat send.
    busiest = {id(route) for router in (send, messages) for route in router.routes}
    probes = {id(route) for route in system_router.routes} | {
        id(route) for route in app.routes if not isinstance(route, APIRoute)
    }
    order = [id(route) for route in app.routes]
    assert busiest <= set(order)
    last = max(order.index(route) for route in busiest)
    assert set(order[: last + 1]) <= busiest | probes
