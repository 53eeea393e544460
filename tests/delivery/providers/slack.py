"""Slack as it answers: incoming webhooks (`ok` as text, or an error word with a status) and
the Web API (`chat.postMessage`, `auth.test`: 200 with `{"ok": false, "error": …}` for most
failures, 429 with Retry-After when rate limited)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tests.delivery.providers.base import ProviderServer, Received, Reply

WEBHOOK_PATH = "/services/T00000001/B00000001/" + "w" * 24
BOT_TOKEN = "xoxb-1111-2222-" + "b" * 24
CHANNELS = {"C0TIDINGS": "general", "C0ARCHIVED": "old"}
MEMBER_OF = {"C0TIDINGS"}


def slack_error(error: str, status: int = 200, **headers: str) -> Reply:
    return Reply.json({"ok": False, "error": error}, status, headers=headers or None)


def webhook_error(error: str, status: int) -> Reply:
    return Reply.text(error, status)


@dataclass
class SlackServer(ProviderServer):
    webhook_path: str = WEBHOOK_PATH
    bot_token: str = BOT_TOKEN
    posted: list[dict[str, object]] = field(default_factory=list)

    def handle(self, request: Received) -> Reply:
        if request.path.startswith("/services/"):
            return self._webhook(request)
        if request.path.startswith("/api/"):
            return self._api(request)
        return Reply.text("not found", 404)

    def _webhook(self, request: Received) -> Reply:
        if request.method != "POST":
            return webhook_error("invalid_request", 405)
        if request.path != self.webhook_path:
            return webhook_error("no_service", 404)
        try:
            payload = request.json()
        except ValueError:
            return webhook_error("invalid_payload", 400)
        if not isinstance(payload, dict):
            return webhook_error("invalid_payload", 400)
        if not payload.get("text") and not payload.get("blocks"):
            return webhook_error("no_text", 400)
        self.posted.append(payload)
        return Reply.text("ok")

    def _api(self, request: Received) -> Reply:
        token = request.bearer()
        if token is None:
            return slack_error("not_authed")
        if token != self.bot_token:
            return slack_error("invalid_auth")
        method = request.path.removeprefix("/api/")
        payload = request.json() if request.body else {}
        if method == "auth.test":
            return Reply.json(
                {
                    "ok": True,
                    "url": "https://tidings-test.slack.com/",
                    "team": "Tidings Test",
                    "user": "tidings_bot",
                    "team_id": "T00000001",
                    "user_id": "U00000001",
                    "bot_id": "B00000001",
                }
            )
        if method != "chat.postMessage":
            return slack_error("unknown_method", 404)
        channel = payload.get("channel")
        if not channel or channel not in CHANNELS:
            return slack_error("channel_not_found")
        if channel == "C0ARCHIVED":
            return slack_error("is_archived")
        if channel not in MEMBER_OF:
            return slack_error("not_in_channel")
        if not payload.get("text") and not payload.get("blocks"):
            return slack_error("no_text")
        self.posted.append(payload)
        ts = f"{time.time():.6f}"
        return Reply.json(
            {
                "ok": True,
                "channel": channel,
                "ts": ts,
                "message": {"type": "message", "text": payload.get("text", ""), "ts": ts},
            }
        )
