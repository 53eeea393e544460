"""A JSON/form webhook receiver, the far end of Apprise's generic json:// and form:// notifiers:
basic auth against one user when configured, 204/200 on success, scriptable failures."""

from __future__ import annotations

from dataclasses import dataclass

from tests.delivery.providers.base import ProviderServer, Received, Reply

HOOK_USER = "hookuser"
HOOK_PASSWORD = "hook-pa55-" + "q" * 12
HOOK_PATH_TOKEN = "T0k3nInThePath" + "z" * 10


@dataclass
class HookServer(ProviderServer):
    user: str | None = HOOK_USER
    password: str = HOOK_PASSWORD

    def handle(self, request: Received) -> Reply:
        if request.method != "POST":
            return Reply.text("method not allowed", 405)
        if self.user is not None and request.basic_auth() != (self.user, self.password):
            return Reply.text("unauthorized", 401)
        if request.path != f"/hooks/{HOOK_PATH_TOKEN}":
            return Reply.text("no such hook", 404)
        return Reply(204)
