"""The Graph API's Messenger Send API as it answers: a page access token (Bearer header or
`access_token` parameter) and, when the app requires it, `appsecret_proof`; `{"recipient_id",
"message_id"}` on success; Graph's error bodies — 190 invalid token, 100/2018001 no matching
user, 551 unavailable, 613 rate limit with `X-Business-Use-Case-Usage`, 2 transient — and the
webhook Meta posts for delivery receipts, signed with the app secret."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from tests.delivery.providers.base import ProviderServer, Received, Reply

PAGE_TOKEN = "EAAG" + "pagetoken" * 6
APP_SECRET = "appsecret-" + "5" * 22
PAGE_ID = "104857600"
PAGE_NAME = "Ada's Shop"
KNOWN_PSID = "6123456789012345"
VERSION = "v21.0"


def graph_error(
    status: int,
    code: int,
    message: str,
    *,
    subcode: int | None = None,
    kind: str = "OAuthException",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Reply:
    error: dict[str, Any] = {
        "message": message,
        "type": kind,
        "code": code,
        "fbtrace_id": "A" + secrets.token_hex(8),
        **extra,
    }
    if subcode is not None:
        error["error_subcode"] = subcode
    return Reply.json({"error": error}, status, headers=headers)


def rate_limited(minutes: int) -> Reply:
    usage = {
        PAGE_ID: [
            {
                "type": "messenger",
                "call_count": 100,
                "total_cputime": 12,
                "total_time": 20,
                "estimated_time_to_regain_access": minutes,
            }
        ]
    }
    return graph_error(
        400,
        613,
        "(#613) Calls to this api have exceeded the rate limit.",
        headers={"X-Business-Use-Case-Usage": json.dumps(usage)},
    )


@dataclass
class GraphServer(ProviderServer):
    token: str = PAGE_TOKEN
    app_secret: str | None = APP_SECRET  # None: the app does not require appsecret_proof
    users: set[str] = field(default_factory=lambda: {KNOWN_PSID})
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def handle(self, request: Received) -> Reply:
        token = request.bearer() or _first(request.query.get("access_token"))
        if token != self.token:
            return graph_error(400, 190, "Invalid OAuth access token - Cannot parse access token")
        if self.app_secret is not None:
            proof = hmac.new(self.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
            if _first(request.query.get("appsecret_proof")) != proof:
                return graph_error(
                    400,
                    100,
                    "Invalid appsecret_proof provided in the API argument",
                    kind="GraphMethodException",
                )
        if request.method == "GET" and request.path == f"/{VERSION}/me":
            return Reply.json({"id": PAGE_ID, "name": PAGE_NAME})
        if request.method == "POST" and request.path == f"/{VERSION}/me/messages":
            return self._send(request)
        return graph_error(
            400, 100, "Unsupported request - method type or path", kind="GraphMethodException"
        )

    def _send(self, request: Received) -> Reply:
        data = request.json()
        recipient = (data.get("recipient") or {}).get("id")
        text = (data.get("message") or {}).get("text")
        if data.get("messaging_type") not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            return graph_error(400, 100, "(#100) Param messaging_type must be one of {…}")
        if data.get("messaging_type") == "MESSAGE_TAG" and not data.get("tag"):
            return graph_error(400, 100, "(#100) Tag is required for MESSAGE_TAG messaging type")
        if not text:
            return graph_error(400, 100, "(#100) The parameter message is required")
        if len(text) > 2000:
            return graph_error(
                400,
                100,
                "(#100) Param message[text] must be UTF-8 encoded string of at most 2000 characters",
            )
        if recipient not in self.users:
            return graph_error(400, 100, "(#100) No matching user found", subcode=2018001)
        return Reply.json(
            {"recipient_id": recipient, "message_id": f"m_{secrets.token_hex(6)}{next(self._ids)}"}
        )


def _first(values: list[str] | None) -> str | None:
    return values[0] if values else None


def delivery_webhook(mids: list[str], *, watermark: int = 1_700_000_000_000) -> bytes:
    """A delivery receipt as Meta posts it to the page's webhook."""
    event = {
        "object": "page",
        "entry": [
            {
                "id": PAGE_ID,
                "time": watermark + 50,
                "messaging": [
                    {
                        "sender": {"id": KNOWN_PSID},
                        "recipient": {"id": PAGE_ID},
                        "timestamp": watermark + 40,
                        "delivery": {"mids": mids, "watermark": watermark},
                    },
                    {
                        "sender": {"id": KNOWN_PSID},
                        "recipient": {"id": PAGE_ID},
                        "timestamp": watermark + 45,
                        "read": {"watermark": watermark},
                    },
                ],
            }
        ],
    }
    return json.dumps(event).encode()


def meta_signature(body: bytes, app_secret: str = APP_SECRET) -> str:
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()
