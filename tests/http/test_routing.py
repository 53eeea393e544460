"""Route order: the send API is matched first, so no other route may match its paths."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.routing import compile_path

from tidings.delivery.routes import routers as delivery_routers

pytestmark = pytest.mark.profiles("embedded")


def _routes(routes: list[Any]) -> list[tuple[str, frozenset[str]]]:
    found: list[tuple[str, frozenset[str]]] = []
    for route in routes:
        if getattr(route, "methods", None) and hasattr(route, "path"):
            found.append((route.path, frozenset(route.methods)))
        elif hasattr(route, "original_router"):  # FastAPI's included router
            found += _routes(route.original_router.routes)
        elif hasattr(route, "routes"):
            found += _routes(route.routes)
    return found


def _example(path: str) -> str:
    return re.sub(r"\{[^}]+\}", str(uuid.UUID(int=7)), path)


async def test_no_other_route_shares_a_path_with_the_send_api(app: FastAPI) -> None:
    ours = {route.path for router in delivery_routers for route in router.routes}
    everything = _routes(app.routes)
    assert ours <= {path for path, _ in everything}
    overlaps = [
        (path, other)
        for path, methods in everything
        for other, other_methods in everything
        if (path in ours) != (other in ours)
        and methods & other_methods
        and compile_path(other)[0].match(_example(path))
    ]
    assert overlaps == []
