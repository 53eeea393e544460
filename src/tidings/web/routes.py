"""The HTML shell and static files of the web app."""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import FastAPI, Request
from sqlalchemy import exists, select
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from tidings import __version__
from tidings.identity.models import User
from tidings.runtime import Runtime

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_PREFIX = "/web"
# Client-side routes answered with the shell; the app's router draws the screen.
SHELL_PATHS = (
    "/",
    "/welcome",
    "/signin",
    "/signup",
    "/sessions",
    "/invite",
    "/w",
    "/w/{rest:path}",
)
_CONFIG_MARK = "__TIDINGS_CONFIG__"


class _RevalidatedStaticFiles(StaticFiles):
    """Static files a browser revalidates (ETag) on every load: no stale modules after an
    upgrade, and no build step to fingerprint file names."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def _content_security_policy(request: Request) -> str:
    host = request.headers.get("host", "")
    socket_origin = f"{'wss' if request.url.scheme == 'https' else 'ws'}://{host}"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src 'self' {socket_origin}",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


async def _first_run(runtime: Runtime) -> bool:
    """True while the install has no account yet (the first one becomes instance admin).

    The identity API has no endpoint that says so; the shell reads it once per page load.
    """
    async with runtime.db.read() as session:
        return not await session.scalar(select(exists().where(User.id.is_not(None))))


def mount_web(app: FastAPI) -> None:
    """Serve the web app; call after every API router is included."""
    shell = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    async def index(request: Request) -> HTMLResponse:
        runtime: Runtime = request.app.state.runtime
        config = {
            "version": __version__,
            "first_run": await _first_run(runtime),
            "open_registration": runtime.settings.open_registration,
        }
        # JSON in a non-executed <script type="application/json">: escape "<" so no text can
        # close the element.
        payload = json.dumps(config).replace("<", "\\u003c")
        return HTMLResponse(
            shell.replace(_CONFIG_MARK, payload),
            headers={
                "Cache-Control": "no-store",
                "Content-Security-Policy": _content_security_policy(request),
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin",
                "X-Frame-Options": "DENY",
            },
        )

    for path in SHELL_PATHS:
        app.add_api_route(path, index, methods=["GET"], include_in_schema=False)
    app.mount(STATIC_PREFIX, _RevalidatedStaticFiles(directory=STATIC_DIR), name="web")
