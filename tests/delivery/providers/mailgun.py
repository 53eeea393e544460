"""Mailgun's messages API as it answers: basic auth `api:<key>` (a bare "Forbidden" otherwise),
form fields checked the way Mailgun checks them, `{"id": "<…>", "message": "Queued. Thank
you."}` on success; plus the error bodies it sends and the signed webhooks it posts."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tests.delivery.providers.base import ProviderServer, Received, Reply

API_KEY = "key-" + "m" * 32
SIGNING_KEY = "whk-" + "g" * 32
DOMAIN = "mg.example.com"


@dataclass
class MailgunServer(ProviderServer):
    api_key: str = API_KEY
    domain: str = DOMAIN

    def handle(self, request: Received) -> Reply:
        if request.basic_auth() != ("api", self.api_key):
            return Reply.text("Forbidden", 401)
        if request.method == "GET" and request.path == f"/v3/domains/{self.domain}":
            return Reply.json({"domain": {"name": self.domain, "state": "active"}})
        if request.method == "GET" and request.path.startswith("/v3/domains/"):
            return Reply.json({"message": "Domain not found"}, 404)
        if request.method != "POST" or not request.path.endswith("/messages"):
            return Reply.json({"message": "Not found"}, 404)
        if request.path != f"/v3/{self.domain}/messages":
            domain = request.path.split("/")[2]
            return Reply.json({"message": f"Domain not found: {domain}"}, 404)
        form = request.form()
        for name in ("from", "to"):
            if not form.get(name):
                return Reply.json({"message": f"'{name}' parameter is missing"}, 400)
        if "@" not in form["to"][0]:
            return Reply.json(
                {"message": "'to' parameter is not a valid address. please check documentation"},
                400,
            )
        if not form.get("text") and not form.get("html"):
            return Reply.json(
                {"message": "Need at least one of 'text' or 'html' parameters specified"}, 400
            )
        return Reply.json({"id": f"<{self.message_id()}>", "message": "Queued. Thank you."})

    def message_id(self) -> str:
        return f"{time.strftime('%Y%m%d%H%M%S')}.{uuid.uuid4().hex[:12]}@{self.domain}"

    @staticmethod
    def rate_limited(retry_after: str = "3") -> Reply:
        return Reply.json(
            {"message": "Too many requests"}, 429, headers={"Retry-After": retry_after}
        )


def webhook(
    event_data: dict[str, Any],
    *,
    signing_key: str = SIGNING_KEY,
    timestamp: int | None = None,
    token: str | None = None,
) -> bytes:
    """A Mailgun webhook body signed as Mailgun signs it."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    tok = token or secrets.token_hex(25)
    signature = hmac.new(signing_key.encode(), (ts + tok).encode(), hashlib.sha256).hexdigest()
    return json.dumps(
        {
            "signature": {"timestamp": ts, "token": tok, "signature": signature},
            "event-data": event_data,
        }
    ).encode()


def event(kind: str, message_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "event": kind,
        "id": uuid.uuid4().hex,
        "timestamp": time.time(),
        "recipient": "ada@example.com",
        "message": {"headers": {"message-id": message_id}},
        "user-variables": {"tidings_delivery_id": "dlv_1"},
        **extra,
    }
