"""Discord's webhook endpoints as they answer: execute (`?wait=true` returns the message),
get; errors as `{"code": …, "message": …}`, 429 with `retry_after` in the body and a rounded
Retry-After header."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tests.delivery.providers.base import ProviderServer, Received, Reply

WEBHOOK_ID = "112233445566778899"
WEBHOOK_TOKEN = "tok-" + "d" * 64
CHANNEL_ID = "998877665544332211"


def discord_error(code: int, message: str, status: int) -> Reply:
    return Reply.json({"message": message, "code": code}, status)


def rate_limited(retry_after: float, *, global_: bool = False) -> Reply:
    return Reply.json(
        {"message": "You are being rate limited.", "retry_after": retry_after, "global": global_},
        429,
        headers={
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Reset-After": str(retry_after),
            "X-RateLimit-Scope": "global" if global_ else "user",
        },
    )


@dataclass
class DiscordServer(ProviderServer):
    webhook_id: str = WEBHOOK_ID
    webhook_token: str = WEBHOOK_TOKEN
    posted: list[dict[str, object]] = field(default_factory=list)

    def handle(self, request: Received) -> Reply:
        parts = request.path.strip("/").split("/")
        # /api/v10/webhooks/{id}/{token}
        if len(parts) != 5 or parts[:3] != ["api", "v10", "webhooks"]:
            return discord_error(0, "404: Not Found", 404)
        webhook_id, token = parts[3], parts[4]
        if webhook_id != self.webhook_id:
            return discord_error(10015, "Unknown Webhook", 404)
        if token != self.webhook_token:
            return discord_error(50027, "Invalid Webhook Token", 401)
        if request.method == "GET":
            return Reply.json(
                {
                    "type": 1,
                    "id": self.webhook_id,
                    "name": "Tidings",
                    "channel_id": CHANNEL_ID,
                    "guild_id": "123",
                    "token": self.webhook_token,
                }
            )
        if request.method != "POST":
            return discord_error(0, "405: Method Not Allowed", 405)
        payload = request.json()
        content = payload.get("content") or ""
        if not content and not payload.get("embeds"):
            return discord_error(50006, "Cannot send an empty message", 400)
        if len(content) > 2000:
            return Reply.json(
                {
                    "message": "Invalid Form Body",
                    "code": 50035,
                    "errors": {"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH"}]}},
                },
                400,
            )
        self.posted.append(payload)
        if request.query.get("wait") != ["true"]:
            return Reply(204)
        message_id = str(random.randint(10**17, 10**18))
        return Reply.json(
            {
                "id": message_id,
                "type": 0,
                "content": content,
                "channel_id": CHANNEL_ID,
                "webhook_id": self.webhook_id,
                "author": {
                    "id": self.webhook_id,
                    "username": payload.get("username", "Tidings"),
                    "bot": True,
                },
            }
        )
