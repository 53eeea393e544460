"""Twilio's Messages and Account resources as they answer: basic auth `sid:token` (20003 and a
401 otherwise), From/To/Body checked with Twilio's error codes, 201 with the message resource;
plus the signed status callbacks Twilio posts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

from tests.delivery.providers.base import ProviderServer, Received, Reply

ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
AUTH_TOKEN = "tok_" + "t" * 28
FROM_NUMBER = "+15005550006"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")


def twilio_error(code: int, message: str, status: int) -> Reply:
    return Reply.json(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        },
        status,
    )


@dataclass
class TwilioServer(ProviderServer):
    account_sid: str = ACCOUNT_SID
    auth_token: str = AUTH_TOKEN
    account_status: str = "active"

    def handle(self, request: Received) -> Reply:
        if request.basic_auth() != (self.account_sid, self.auth_token):
            return twilio_error(20003, "Authenticate", 401)
        account = f"/2010-04-01/Accounts/{self.account_sid}"
        if request.method == "GET" and request.path == f"{account}.json":
            return Reply.json(
                {"sid": self.account_sid, "friendly_name": "Test", "status": self.account_status}
            )
        if request.method != "POST" or request.path != f"{account}/Messages.json":
            return twilio_error(20404, "The requested resource was not found", 404)
        form = request.form()
        to = (form.get("To") or [""])[0]
        sender = (form.get("From") or [""])[0]
        if not to:
            return twilio_error(21604, "A 'To' phone number is required.", 400)
        if not E164.match(to):
            return twilio_error(21211, f"The 'To' number {to} is not a valid phone number.", 400)
        if not sender and not form.get("MessagingServiceSid"):
            return twilio_error(21603, "A 'From' phone number is required.", 400)
        if sender and sender != FROM_NUMBER:
            return twilio_error(
                21659,
                f"'From' {sender} is not a Twilio phone number or Short Code country mismatch",
                400,
            )
        if not form.get("Body"):
            return twilio_error(21602, "Message body is required.", 400)
        sid = "SM" + uuid.uuid4().hex
        return Reply.json(
            {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": to,
                "from": sender or None,
                "body": form["Body"][0],
                "status": "queued",
                "num_segments": "1",
                "uri": f"{account}/Messages/{sid}.json",
            },
            201,
        )


def signed_callback(
    url: str, params: dict[str, str], *, auth_token: str = AUTH_TOKEN
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a status callback, signed as Twilio signs it."""
    payload = url + "".join(k + v for k, v in sorted(params.items()))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": base64.b64encode(digest).decode(),
    }
    return headers, urlencode(params).encode()
