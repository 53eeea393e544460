"""Email through Mailgun's HTTP API.

Send: `POST {api_base}/v3/{domain}/messages`, form-encoded, basic auth `api:<key>`; the delivery
id travels as the header `X-Tidings-Delivery-Id` (`h:`) and the user variable
`tidings_delivery_id` (`v:`), which Mailgun echoes in its webhooks. Status callbacks are
Mailgun's JSON webhooks, signed HMAC-SHA256(webhook signing key, timestamp + token) and refused
outside a replay window: `delivered` → delivered, `failed` with `severity: permanent` → bounced
(temporary failures are Mailgun's to retry, and not reported).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr

from tidings.delivery.connectors.base import (
    CallbackRejected,
    Channel,
    ConnectorCredentials,
    ConnectorSettings,
    ConnectorType,
    DeliveryError,
    ErrorClass,
    OutboundEnvelope,
    SendResult,
    StatusUpdate,
    TestResult,
)
from tidings.delivery.connectors.http import (
    ApiBase,
    checked_request,
    json_object,
    probe,
    provider_error,
    secret_values,
    summarize,
)

PROVIDER = "Mailgun"
DELIVERY_ID_HEADER = "X-Tidings-Delivery-Id"
DELIVERY_ID_VARIABLE = "tidings_delivery_id"


class MailgunSettings(ConnectorSettings):
    domain: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.-]+$")
    from_address: str = Field(min_length=3, description='e.g. "Acme <noreply@mg.acme.com>"')
    reply_to: str | None = None
    tags: list[str] = Field(default_factory=list, max_length=3)
    # US: https://api.mailgun.net, EU: https://api.eu.mailgun.net
    api_base: ApiBase = "https://api.mailgun.net"
    callback_tolerance_seconds: int = Field(default=300, ge=30, le=3600)


class MailgunCredentials(ConnectorCredentials):
    api_key: SecretStr = Field(min_length=1)
    # Mailgun's "HTTP webhook signing key"; needed only to take status callbacks.
    webhook_signing_key: SecretStr | None = None


class MailgunConnector(ConnectorType):
    type_name: ClassVar[str] = "mailgun"
    channel: ClassVar[Channel] = Channel.EMAIL
    title: ClassVar[str] = "Mailgun (email API)"
    Settings = MailgunSettings
    Credentials = MailgunCredentials

    settings: MailgunSettings
    credentials: MailgunCredentials

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return await checked_request(
            self.context,
            method,
            url,
            provider=PROVIDER,
            redact_values=secret_values(self.credentials),
            error=_error,
            auth=("api", self.credentials.api_key.get_secret_value()),
            **kwargs,
        )

    async def send(self, message: OutboundEnvelope) -> SendResult:
        subject = str(message.content.get("subject") or "")
        text = message.content.get("text")
        html = message.content.get("html")
        if not text and not html:
            raise DeliveryError(ErrorClass.INVALID_REQUEST, "an email needs a text or html part")
        form: list[tuple[str, str]] = [
            ("from", self.settings.from_address),
            ("to", message.recipient),
            ("subject", subject),
        ]
        if text:
            form.append(("text", str(text)))
        if html:
            form.append(("html", str(html)))
        if self.settings.reply_to:
            form.append(("h:Reply-To", self.settings.reply_to))
        form.append((f"h:{DELIVERY_ID_HEADER}", message.delivery_id))
        form.append((f"v:{DELIVERY_ID_VARIABLE}", message.delivery_id))
        form.extend(("o:tag", tag) for tag in self.settings.tags)
        response = await self._request(
            "POST",
            f"{self.settings.api_base}/v3/{self.settings.domain}/messages",
            data=dict(_group(form)),
        )
        message_id = json_object(response).get("id")
        return SendResult(
            provider_message_id=str(message_id).strip("<>") if message_id else None,
            status=response.status_code,
            response=summarize(response.text, secret_values(self.credentials)) or None,
        )

    async def test(self) -> TestResult:
        return await probe(
            self._request("GET", f"{self.settings.api_base}/v3/domains/{self.settings.domain}"),
            self._domain_state,
        )

    def _domain_state(self, response: httpx.Response) -> TestResult:
        domain = json_object(response).get("domain") or {}
        state = domain.get("state") if isinstance(domain, dict) else None
        if state not in (None, "active"):
            return TestResult(
                ok=False,
                detail=f"the domain {self.settings.domain} is {state} at Mailgun",
                status=response.status_code,
            )
        return TestResult(
            ok=True,
            detail=f"the domain {self.settings.domain} is active at Mailgun",
            status=response.status_code,
        )

    @classmethod
    def verify_status_callback(
        cls,
        settings: ConnectorSettings,
        credentials: ConnectorCredentials,
        *,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float | None = None,
    ) -> list[StatusUpdate]:
        if not isinstance(settings, MailgunSettings) or not isinstance(
            credentials, MailgunCredentials
        ):
            raise CallbackRejected("not a Mailgun connector's configuration")
        if credentials.webhook_signing_key is None:
            raise CallbackRejected("no webhook signing key is configured for this connector")
        try:
            payload = json.loads(body)
            signature = payload["signature"]
            timestamp = str(signature["timestamp"])
            token = str(signature["token"])
            given = str(signature["signature"])
        except (ValueError, KeyError, TypeError):
            raise CallbackRejected("not a signed Mailgun webhook") from None
        key = credentials.webhook_signing_key.get_secret_value().encode()
        expected = hmac.new(key, (timestamp + token).encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, given):
            raise CallbackRejected("the Mailgun signature does not match")
        current = time.time() if now is None else now
        try:
            age = abs(current - float(timestamp))
        except ValueError:
            raise CallbackRejected("the Mailgun timestamp is not a number") from None
        if age > settings.callback_tolerance_seconds:
            raise CallbackRejected("the Mailgun signature is outside the replay window")
        event = payload.get("event-data")
        if not isinstance(event, dict):
            return []
        return _status_updates(event)


def _status_updates(event: dict[str, Any]) -> list[StatusUpdate]:
    message = event.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = headers.get("message-id") if isinstance(headers, dict) else None
    if not message_id:
        return []
    message_id = str(message_id).strip("<>")
    kind = event.get("event")
    status_info = event.get("delivery-status")
    description = None
    if isinstance(status_info, dict):
        parts = [str(status_info.get(k)) for k in ("code", "message", "description")]
        description = " ".join(p for p in parts if p and p != "None") or None
    if kind == "delivered":
        return [StatusUpdate(message_id, "delivered", description)]
    if kind == "failed" and event.get("severity") == "permanent":
        reason = event.get("reason")
        detail = " — ".join(str(p) for p in (reason, description) if p) or None
        return [StatusUpdate(message_id, "bounced", detail)]
    return []


def _group(form: list[tuple[str, str]]) -> dict[str, str | list[str]]:
    grouped: dict[str, str | list[str]] = {}
    for name, value in form:
        existing = grouped.get(name)
        if existing is None:
            grouped[name] = value
        elif isinstance(existing, list):
            existing.append(value)
        else:
            grouped[name] = [existing, value]
    return grouped


def _error(response: httpx.Response, secrets: list[str]) -> DeliveryError:
    """Mailgun's errors: `{"message": "..."}` (401 answers a bare "Forbidden")."""
    status = response.status_code
    text = str(json_object(response).get("message") or "")
    lowered = text.lower()
    summary = summarize(response.text, secrets) or None
    if status == 400 and "'to'" in lowered and ("valid" in lowered or "invalid" in lowered):
        return DeliveryError(
            ErrorClass.INVALID_RECIPIENT,
            f"{PROVIDER} refused the recipient: {summarize(text, secrets)}",
            status=status,
            response=summary,
        )
    if status == 404 and "domain" in lowered:
        return DeliveryError(
            ErrorClass.CONFIGURATION,
            f"{PROVIDER}: {summarize(text, secrets)}",
            status=status,
            response=summary,
        )
    return provider_error(
        response, provider=PROVIDER, redact_values=secrets, detail=summarize(text, secrets)
    )
