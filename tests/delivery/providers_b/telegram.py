"""The Telegram Bot API as it answers: `/bot<token>/<method>`, `{"ok": true, "result": …}`, and
its errors — `{"ok": false, "error_code", "description", "parameters": {"retry_after"}}` — for an
unknown token (401), a malformed one (404), a chat it cannot find (400), a user who blocked the
bot (403), flood control (429) and its own trouble (5xx)."""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass, field
from typing import Any

from tests.delivery.providers.base import ProviderServer, Received, Reply

BOT_TOKEN = "7301234567:AAF-test_token-0123456789abcdefGHIJ"
BOT_USERNAME = "tidings_test_bot"
KNOWN_CHAT = 424242
BLOCKED_CHAT = 515151
CHANNEL = "@tidings_news"
_PATH = re.compile(r"^/bot(?P<token>[^/]+)/(?P<method>\w+)$")


def error(code: int, description: str, **parameters: Any) -> Reply:
    body: dict[str, Any] = {"ok": False, "error_code": code, "description": description}
    if parameters:
        body["parameters"] = parameters
    return Reply.json(body, code)


@dataclass
class TelegramServer(ProviderServer):
    token: str = BOT_TOKEN
    chats: set[int | str] = field(default_factory=lambda: {KNOWN_CHAT, BLOCKED_CHAT, CHANNEL})
    blocked: set[int | str] = field(default_factory=lambda: {BLOCKED_CHAT})
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1001))

    def handle(self, request: Received) -> Reply:
        match = _PATH.match(request.path)
        if match is None:
            return error(404, "Not Found")
        if match["token"] != self.token:
            # A token of the right shape that names no bot is 401; anything else 404.
            if re.fullmatch(r"\d+:[\w-]+", match["token"]):
                return error(401, "Unauthorized")
            return error(404, "Not Found")
        method = match["method"]
        if method == "getMe":
            return Reply.json(
                {
                    "ok": True,
                    "result": {
                        "id": int(self.token.split(":")[0]),
                        "is_bot": True,
                        "first_name": "Tidings test",
                        "username": BOT_USERNAME,
                    },
                }
            )
        if method == "sendMessage":
            return self._send_message(request)
        return error(404, "Not Found: method not found")

    def _send_message(self, request: Received) -> Reply:
        if request.headers.get("content-type", "").split(";")[0] != "application/json":
            return error(400, "Bad Request: message text is empty")
        data = request.json()
        chat_id = data.get("chat_id")
        text = data.get("text")
        if not text:
            return error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return error(400, "Bad Request: message is too long")
        if data.get("parse_mode") not in (None, "HTML", "Markdown", "MarkdownV2"):
            return error(400, "Bad Request: unsupported parse_mode")
        if data.get("parse_mode") == "HTML" and text.count("<") != text.count(">"):
            return error(400, "Bad Request: can't parse entities: Unexpected end of name token")
        if chat_id not in self.chats:
            return error(400, "Bad Request: chat not found")
        if chat_id in self.blocked:
            return error(403, "Forbidden: bot was blocked by the user")
        return Reply.json(
            {
                "ok": True,
                "result": {
                    "message_id": next(self._ids),
                    "from": {"id": int(self.token.split(":")[0]), "is_bot": True},
                    "chat": {"id": chat_id, "type": "private"},
                    "date": int(time.time()),
                    "text": text,
                },
            }
        )

    @staticmethod
    def flood(retry_after: int) -> Reply:
        return error(429, f"Too Many Requests: retry after {retry_after}", retry_after=retry_after)
