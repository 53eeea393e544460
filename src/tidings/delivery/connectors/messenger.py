"""Facebook Messenger through the Send API: `POST {api_base}/{version}/me/messages`.

The page access token travels in the Authorization header (Graph accepts a Bearer token), never
in the URL, so no request log can hold it; with the app secret configured every call also
carries `appsecret_proof` (HMAC-SHA256 of the token under the app secret), which pages that
"require app secret" insist on.

Graph errors are `{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}` and
are classed by code, not HTTP status (Graph answers most of them with 400): 190/102 → auth,
4/17/32/613 → rate limited (the wait from `X-Business-Use-Case-Usage` /
`X-App-Usage` / `X-Page-Usage` `estimated_time_to_regain_access`, or Retry-After),
100/2018001 and 551 → invalid recipient, 1/2/1200 or `is_transient` → server error.

Delivery receipts arrive on the page's webhook signed `X-Hub-Signature-256: sha256=<hex
HMAC-SHA256(app secret, raw body)>`; `verify_status_callback` checks that and reports each
delivered `mid`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import httpx
from pydantic import Field, SecretStr, model_validator

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
    chat_text,
)
from tidings.delivery.connectors.http import (
    ApiBase,
    error_for_status,
    json_object,
    parse_retry_after,
    probe,
    raise_for_provider_status,
    redact,
    request,
    summarize,
)

PROVIDER = "Messenger"
SIGNATURE_HEADER = "X-Hub-Signature-256"
MAX_TEXT = 2000  # characters; the Send API refuses longer texts
_AUTH_CODES = frozenset({102, 190})
_THROTTLE_CODES = frozenset({4, 17, 32, 613})
_TRANSIENT_CODES = frozenset({1, 2, 1200})
_NO_MATCHING_USER = 2018001
_OUTSIDE_WINDOW = 2018278  # code 10: outside the 24 h window without a message tag
_USAGE_HEADERS = ("x-business-use-case-usage", "x-app-usage", "x-page-usage", "x-ad-account-usage")


class MessengerSettings(ConnectorSettings):
    api_base: ApiBase = "https://graph.facebook.com"
    api_version: str = Field(default="v21.0", pattern=r"^v\d{1,3}\.\d{1,2}$")
    # RESPONSE: an answer within the 24 h window; UPDATE: proactive, also inside it;
    # MESSAGE_TAG: outside the window, for the purpose `message_tag` names.
    messaging_type: Literal["RESPONSE", "UPDATE", "MESSAGE_TAG"] = "RESPONSE"
    message_tag: (
        Literal["ACCOUNT_UPDATE", "CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "HUMAN_AGENT"]
        | None
    ) = None

    @model_validator(mode="after")
    def _tag_with_message_tag(self) -> MessengerSettings:
        if (self.messaging_type == "MESSAGE_TAG") != (self.message_tag is not None):
            raise ValueError("message_tag is set exactly when messaging_type is MESSAGE_TAG")
        return self


class MessengerCredentials(ConnectorCredentials):
    page_access_token: SecretStr = Field(min_length=10, max_length=1000)
    # Signs appsecret_proof and verifies the webhook's delivery receipts.
    app_secret: SecretStr | None = Field(default=None, min_length=8, max_length=200)


class MessengerConnector(ConnectorType):
    type_name: ClassVar[str] = "messenger"
    channel: ClassVar[Channel] = Channel.CHAT
    title: ClassVar[str] = "Facebook Messenger"
    Settings: ClassVar[type[ConnectorSettings]] = MessengerSettings
    Credentials: ClassVar[type[ConnectorCredentials]] = MessengerCredentials

    settings: MessengerSettings
    credentials: MessengerCredentials

    @property
    def _secrets(self) -> list[str]:
        values = [self.credentials.page_access_token.get_secret_value()]
        if self.credentials.app_secret is not None:
            values.append(self.credentials.app_secret.get_secret_value())
        return values

    async def send(self, message: OutboundEnvelope) -> SendResult:
        psid = message.recipient.strip()
        if not psid.isdigit():
            raise DeliveryError(
                ErrorClass.INVALID_RECIPIENT,
                "a Messenger recipient is the page-scoped id (PSID) of the person",
            )
        text = chat_text(message, provider=PROVIDER, limit=MAX_TEXT)
        payload: dict[str, Any] = {
            "recipient": {"id": psid},
            "messaging_type": self.settings.messaging_type,
            "message": {"text": text},
        }
        if self.settings.message_tag is not None:
            payload["tag"] = self.settings.message_tag
        response = await self._call("POST", "me/messages", json=payload)
        body = json_object(response)
        message_id = body.get("message_id")
        return SendResult(
            provider_message_id=str(message_id) if message_id else None,
            status=response.status_code,
            response=summarize(response.text, self._secrets),
        )

    async def test(self) -> TestResult:
        return await probe(
            self._call("GET", "me", params={"fields": "id,name"}), _page_named, classed=False
        )

    async def _call(
        self, method: str, path: str, *, params: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        token = self.credentials.page_access_token.get_secret_value()
        query = dict(params or {})
        if self.credentials.app_secret is not None:
            query["appsecret_proof"] = appsecret_proof(
                self.credentials.app_secret.get_secret_value(), token
            )
        url = f"{self.settings.api_base}/{self.settings.api_version}/{path}"
        response = await request(
            self.context,
            method,
            url,
            provider=PROVIDER,
            redact_values=self._secrets,
            params=query,
            headers={"Authorization": f"Bearer {token}"},
            **kwargs,
        )
        _raise_for_graph(response, self._secrets)
        return response

    @classmethod
    def verify_status_callback(
        cls,
        settings: ConnectorSettings,
        credentials: ConnectorCredentials,
        *,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
    ) -> list[StatusUpdate]:
        if not isinstance(credentials, MessengerCredentials) or credentials.app_secret is None:
            raise CallbackRejected("configure the app secret to receive Messenger webhooks")
        given = _header(headers, SIGNATURE_HEADER)
        if given is None or not given.startswith("sha256="):
            raise CallbackRejected(f"{SIGNATURE_HEADER} is missing")
        expected = hmac.new(
            credentials.app_secret.get_secret_value().encode(), body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(given.removeprefix("sha256=").lower(), expected):
            raise CallbackRejected(f"{SIGNATURE_HEADER} does not match the body")
        try:
            event = json.loads(body)
        except ValueError:
            raise CallbackRejected("the webhook body is not JSON") from None
        return _delivered(event)


def _page_named(response: httpx.Response) -> TestResult:
    page = json_object(response)
    return TestResult(
        ok=True,
        detail=f"the token is page {page.get('name', '?')} ({page.get('id', '?')})",
        status=response.status_code,
    )


def appsecret_proof(app_secret: str, access_token: str) -> str:
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def sign_webhook(app_secret: str, body: bytes) -> str:
    """The X-Hub-Signature-256 value Meta sends with `body`."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def _delivered(event: Any) -> list[StatusUpdate]:
    """Each `mid` a `delivery` event names. Read receipts carry only a watermark (a time, not a
    message), and a delivery without `mids` likewise: neither names a message to update."""
    if not isinstance(event, dict) or event.get("object") != "page":
        return []
    updates: list[StatusUpdate] = []
    for entry in event.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        for messaging in entry.get("messaging") or []:
            delivery = messaging.get("delivery") if isinstance(messaging, dict) else None
            if not isinstance(delivery, dict):
                continue
            watermark = delivery.get("watermark")
            updates.extend(
                StatusUpdate(mid, "delivered", detail=f"watermark {watermark}")
                for mid in delivery.get("mids") or []
                if isinstance(mid, str) and mid
            )
    return updates


def _regain_seconds(response: httpx.Response) -> float | None:
    """The longest `estimated_time_to_regain_access` (minutes) among Graph's usage headers."""
    minutes: list[float] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            value = node.get("estimated_time_to_regain_access")
            if isinstance(value, int | float) and value > 0:
                minutes.append(float(value))
            for child in node.values():
                collect(child)
        elif isinstance(node, list):
            for child in node:
                collect(child)

    for name in _USAGE_HEADERS:
        raw = response.headers.get(name)
        if raw:
            try:
                collect(json.loads(raw))
            except ValueError:
                continue
    if minutes:
        return max(minutes) * 60
    return parse_retry_after(response.headers.get("retry-after"))


def _raise_for_graph(response: httpx.Response, secrets: list[str]) -> None:
    if 200 <= response.status_code < 300:
        return
    error = json_object(response).get("error")
    if not isinstance(error, dict):
        raise_for_provider_status(response, provider=PROVIDER, redact_values=secrets)
        return
    code = error.get("code")
    subcode = error.get("error_subcode")
    text = redact(str(error.get("message") or "no message"), secrets)
    trace = error.get("fbtrace_id")
    detail = f"{text} (code {code}" + (f"/{subcode}" if subcode else "") + ")"
    if trace:
        detail += f" fbtrace_id={trace}"
    summary = summarize(response.text, secrets)
    status = response.status_code
    retry_after: float | None = None
    if code in _AUTH_CODES:
        error_class = ErrorClass.AUTH
    elif code in _THROTTLE_CODES:
        error_class = ErrorClass.RATE_LIMITED
        retry_after = _regain_seconds(response)
    elif (code == 100 and subcode == _NO_MATCHING_USER) or code == 551:
        error_class = ErrorClass.INVALID_RECIPIENT
    elif code == 10 and subcode == _OUTSIDE_WINDOW:
        error_class = ErrorClass.INVALID_REQUEST
    elif code in _TRANSIENT_CODES or error.get("is_transient") is True:
        error_class = ErrorClass.SERVER_ERROR
    elif code == 10 or (isinstance(code, int) and 200 <= code < 300):  # permissions
        error_class = ErrorClass.AUTH
    else:
        fallback = error_for_status(status, provider=PROVIDER, detail=detail, response=summary)
        if status == 429:
            retry_after = _regain_seconds(response)
        error_class = fallback.error_class if fallback else ErrorClass.INVALID_REQUEST
    raise DeliveryError(
        error_class,
        f"{PROVIDER} refused (HTTP {status}): {detail}",
        status=status,
        retry_after=retry_after,
        response=summary,
    )
