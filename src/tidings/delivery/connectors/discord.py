"""Discord through a channel webhook.

The webhook URL is the credential (`https://discord.com/api/webhooks/{id}/{token}`, or the
discordapp.com/ptb/canary/versioned forms); its id and token are sent to
`{api_base}/webhooks/{id}/{token}?wait=true`, so Discord answers with the created message and
its id. Mentions are off unless allowed (a template must not ping @everyone by accident).
Errors: `{"code": …, "message": …}`; 10015 Unknown Webhook and 50027 Invalid Webhook Token mean
the credential is dead (auth); 429 carries `retry_after` (seconds, float) in the body, which is
preferred to the rounded Retry-After header.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

import httpx
from pydantic import Field, SecretStr

from tidings.delivery.connectors.base import (
    Channel,
    ConnectorCredentials,
    ConnectorSettings,
    ConnectorType,
    DeliveryError,
    ErrorClass,
    OutboundEnvelope,
    SendResult,
    TestResult,
)
from tidings.delivery.connectors.http import (
    ApiBase,
    HttpUrl,
    checked_request,
    json_object,
    probe,
    provider_error,
    secret_check,
    secret_values,
    summarize,
)

PROVIDER = "Discord"
WEBHOOK_URL = re.compile(
    r"^https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api(?:/v\d+)?/webhooks/"
    r"(?P<id>\d{5,25})/(?P<token>[A-Za-z0-9_-]{20,200})/?$"
)
MAX_CONTENT = 2000
DEAD_WEBHOOK_CODES = frozenset({10015, 50027})  # Unknown Webhook, Invalid Webhook Token


class DiscordSettings(ConnectorSettings):
    username: str | None = Field(default=None, min_length=1, max_length=80)
    avatar_url: HttpUrl | None = None
    # Let @everyone, @here, role and user mentions in the text notify people.
    allow_mentions: bool = False
    api_base: ApiBase = "https://discord.com/api/v10"


class DiscordCredentials(ConnectorCredentials):
    webhook_url: Annotated[
        SecretStr,
        secret_check(
            lambda url: WEBHOOK_URL.match(url) is not None,
            "not a Discord webhook URL (https://discord.com/api/webhooks/<id>/<token>)",
        ),
    ]


class DiscordWebhookConnector(ConnectorType):
    type_name: ClassVar[str] = "discord"
    channel: ClassVar[Channel] = Channel.CHAT
    title: ClassVar[str] = "Discord webhook"
    Settings = DiscordSettings
    Credentials = DiscordCredentials
    # Discord: 5 requests per 2 seconds per webhook.
    default_rate_per_second: ClassVar[float | None] = 2.5

    settings: DiscordSettings
    credentials: DiscordCredentials

    def _url(self) -> str:
        match = WEBHOOK_URL.match(self.credentials.webhook_url.get_secret_value())
        if match is None:  # the validator saw to it; kept for a credential stored before
            raise DeliveryError(ErrorClass.CONFIGURATION, "the Discord webhook URL is not valid")
        return f"{self.settings.api_base}/webhooks/{match['id']}/{match['token']}"

    def _secrets(self) -> list[str]:
        values = secret_values(self.credentials)
        match = WEBHOOK_URL.match(self.credentials.webhook_url.get_secret_value())
        if match is not None:
            values.append(match["token"])
        return values

    async def send(self, message: OutboundEnvelope) -> SendResult:
        text = str(message.content.get("text") or "")
        embeds = message.content.get("embeds")
        if not text and not embeds:
            raise DeliveryError(ErrorClass.INVALID_REQUEST, "a Discord message needs text")
        if len(text) > MAX_CONTENT:
            raise DeliveryError(
                ErrorClass.INVALID_REQUEST,
                f"a Discord message holds at most {MAX_CONTENT} characters, this has {len(text)}",
            )
        payload: dict[str, Any] = {
            "allowed_mentions": (
                {"parse": ["users", "roles", "everyone"]}
                if self.settings.allow_mentions
                else {"parse": []}
            )
        }
        if text:
            payload["content"] = text
        if embeds:
            payload["embeds"] = embeds
        if self.settings.username:
            payload["username"] = self.settings.username
        if self.settings.avatar_url:
            payload["avatar_url"] = self.settings.avatar_url
        response = await self._request("POST", params={"wait": "true"}, json=payload)
        data = json_object(response)
        message_id = data.get("id")
        return SendResult(
            provider_message_id=str(message_id) if message_id else None,
            status=response.status_code,
            response=summarize(f"message {message_id} in channel {data.get('channel_id')}"),
        )

    async def test(self) -> TestResult:
        return await probe(self._request("GET"), _webhook_found)

    async def _request(self, method: str, **kwargs: Any) -> httpx.Response:
        return await checked_request(
            self.context,
            method,
            self._url(),
            provider=PROVIDER,
            redact_values=self._secrets(),
            error=_error,
            **kwargs,
        )


def _webhook_found(response: httpx.Response) -> TestResult:
    data = json_object(response)
    return TestResult(
        ok=True,
        detail=f"webhook {data.get('name')!r} posts to channel {data.get('channel_id')}",
        status=response.status_code,
    )


def _error(response: httpx.Response, secrets: list[str]) -> DeliveryError:
    status = response.status_code
    body = json_object(response)
    code = body.get("code")
    text = summarize(str(body.get("message") or ""), secrets)
    detail = f"{text} (code {code})" if code else text
    if isinstance(code, int) and code in DEAD_WEBHOOK_CODES:
        return DeliveryError(
            ErrorClass.AUTH,
            f"{PROVIDER}: {detail}; the webhook was deleted or its URL is wrong",
            status=status,
            response=summarize(response.text, secrets) or None,
        )
    error = provider_error(
        response, provider=PROVIDER, redact_values=secrets, detail=detail or None
    )
    if error.error_class is ErrorClass.RATE_LIMITED:
        retry_after = body.get("retry_after")
        if isinstance(retry_after, int | float) and retry_after >= 0:
            error.retry_after = float(retry_after)
    return error
