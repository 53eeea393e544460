"""The web app: static ES modules and CSS under `static/`, served by Tidings itself.

`mount_web(app)` adds, after every API router, the static files at `/web/` and the HTML shell
for `/` and the client-side routes (`/signin`, `/w/…`). Nothing under `/api`, `/docs`,
`/openapi.json`, `/metrics`, `/healthz` or `/readyz` is touched; the routes stay out of the
OpenAPI document. See docs/web.md.
"""

from __future__ import annotations

from tidings.web.routes import STATIC_DIR, mount_web

__all__ = ["STATIC_DIR", "mount_web"]
