"""Generic outgoing webhook: the rendered message as JSON, POSTed to a URL and signed.

The signature follows Stripe's scheme (G8): `Tidings-Signature: t=<unix>,v1=<hex>` where the
hex is HMAC-SHA256(signing secret, f"{t}.{raw body}"). While a secret is being rotated the
previous one is configured too and a second `v1=` is sent, so a receiver holding either secret
verifies. `Tidings-Delivery-Id` is stable across retries: receivers deduplicate on it.
`verify_signature` is the receiver's side, used by the tests and by anyone writing a receiver
in Python.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import Field, SecretStr, field_validator

from tidings.delivery.connectors.base import (
    Channel,
    ConnectorCredentials,
    ConnectorSettings,
    ConnectorType,
    OutboundEnvelope,
    SendResult,
    TestResult,
)
from tidings.delivery.connectors.http import (
    HttpUrl,
    probe,
    raise_for_provider_status,
    request,
    secret_values,
    summarize,
)

SIGNATURE_HEADER = "Tidings-Signature"
DELIVERY_ID_HEADER = "Tidings-Delivery-Id"
EVENT_HEADER = "Tidings-Event"
DEFAULT_TOLERANCE_SECONDS = 300
# Headers the connector sets itself; extra headers may not replace them.
_RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "transfer-encoding",
        "connection",
        SIGNATURE_HEADER.lower(),
        DELIVERY_ID_HEADER.lower(),
        EVENT_HEADER.lower(),
    }
)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of f"{timestamp}.{body}" under `secret`."""
    payload = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def signature_header(secrets_: Iterable[str], timestamp: int, body: bytes) -> str:
    parts = [f"t={timestamp}"]
    parts.extend(f"v1={sign(secret, timestamp, body)}" for secret in secrets_)
    return ",".join(parts)


def verify_signature(
    header: str,
    body: bytes,
    secret: str,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """Whether a `Tidings-Signature` header is valid for `body` under `secret` and recent."""
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


class WebhookSettings(ConnectorSettings):
    url: HttpUrl = Field(description="Where to POST; http(s), checked against the outbound guard.")
    headers: dict[str, str] = Field(
        default_factory=dict, description="Extra request headers (not the Tidings-* ones)."
    )

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"header {name!r} is set by Tidings and cannot be configured")
            if (
                not name
                or any(c in name for c in ":\r\n ")
                or any(c in header_value for c in "\r\n")
            ):
                raise ValueError(f"header {name!r} is not a valid header")
        return value


class WebhookCredentials(ConnectorCredentials):
    signing_secret: SecretStr = Field(min_length=16)
    # Set while rotating: both signatures are sent until receivers have the new secret.
    previous_signing_secret: SecretStr | None = Field(default=None, min_length=16)


class WebhookConnector(ConnectorType):
    type_name: ClassVar[str] = "webhook"
    channel: ClassVar[Channel] = Channel.WEBHOOK
    title: ClassVar[str] = "Webhook (signed JSON POST)"
    Settings = WebhookSettings
    Credentials = WebhookCredentials

    settings: WebhookSettings
    credentials: WebhookCredentials

    def _secrets(self) -> list[str]:
        signing = [self.credentials.signing_secret.get_secret_value()]
        if self.credentials.previous_signing_secret is not None:
            signing.append(self.credentials.previous_signing_secret.get_secret_value())
        return signing

    async def _post(self, event: str, delivery_id: str, payload: dict[str, Any]) -> SendResult:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str).encode()
        timestamp = int(time.time())
        headers = {
            **self.settings.headers,
            "Content-Type": "application/json",
            EVENT_HEADER: event,
            DELIVERY_ID_HEADER: delivery_id,
            SIGNATURE_HEADER: signature_header(self._secrets(), timestamp, body),
        }
        redacted = secret_values(self.credentials)
        response = await request(
            self.context,
            "POST",
            self.settings.url,
            provider="webhook receiver",
            redact_values=redacted,
            content=body,
            headers=headers,
        )
        raise_for_provider_status(response, provider="webhook receiver", redact_values=redacted)
        return SendResult(
            provider_message_id=None,
            status=response.status_code,
            response=summarize(response.text, redacted) or None,
        )

    async def send(self, message: OutboundEnvelope) -> SendResult:
        payload = {
            "id": message.delivery_id,
            "type": "message",
            "created_at": _now_iso(),
            "recipient": message.recipient,
            "content": dict(message.content),
            "metadata": dict(message.metadata),
        }
        return await self._post("message", message.delivery_id, payload)

    async def test(self) -> TestResult:
        ping_id = f"ping_{secrets.token_hex(8)}"
        payload = {"id": ping_id, "type": "ping", "created_at": _now_iso()}
        return await probe(self._post("ping", ping_id, payload), _answered)


def _answered(result: SendResult) -> TestResult:
    return TestResult(
        ok=True, detail=f"the receiver answered HTTP {result.status}", status=result.status
    )


def _now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")
