"""Slack: an incoming webhook (one fixed channel), or the Web API's `chat.postMessage` with a
bot token (the recipient is the channel).

Incoming webhook: the URL is the credential. Only its path (`/services/T…/B…/…`) is used,
sent to `api_base` (https://hooks.slack.com), so a Slack connector cannot be pointed at another
host by its credential. Slack answers `ok` as text, or an error word with a status
(400 invalid_payload/no_text, 403 action_prohibited, 404 no_service/channel_not_found,
410 channel_is_archived, 429 with Retry-After).

Web API: Slack answers 200 with `{"ok": false, "error": "…"}` for most failures; the error
word is classed (invalid_auth … → auth, channel_not_found … → invalid_recipient). A 429 with
Retry-After is `ratelimited`. The delivery id travels as message metadata
(`event_type: tidings_delivery`).
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
    checked_request,
    failed_test,
    probe,
    provider_error,
    request,
    secret_check,
    secret_values,
    summarize,
)

PROVIDER = "Slack"
WEBHOOK_PATH = re.compile(r"^/services/[A-Za-z0-9]+/[A-Za-z0-9]+/[A-Za-z0-9]+$")
METADATA_EVENT = "tidings_delivery"

AUTH_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "org_login_required",
        "ekm_access_denied",
        "action_prohibited",  # webhooks: an admin restricted the app
        "no_service",  # webhooks: the webhook was removed or disabled
        "invalid_token",
    }
)
RECIPIENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "channel_is_archived",
        "user_not_found",
        "cannot_dm_bot",
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",
        "restricted_action_non_threadable_channel",
    }
)
CONFIGURATION_ERRORS = frozenset(
    {"missing_scope", "not_allowed_token_type", "invalid_arguments", "team_access_not_granted"}
)
SERVER_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable"})
TIMEOUT_ERRORS = frozenset({"request_timeout"})
RATE_ERRORS = frozenset({"ratelimited", "rate_limited", "message_limit_exceeded"})


def classify(error: str) -> ErrorClass:
    """The error class of one of Slack's error words."""
    if error in AUTH_ERRORS:
        return ErrorClass.AUTH
    if error in RECIPIENT_ERRORS:
        return ErrorClass.INVALID_RECIPIENT
    if error in CONFIGURATION_ERRORS:
        return ErrorClass.CONFIGURATION
    if error in SERVER_ERRORS:
        return ErrorClass.SERVER_ERROR
    if error in TIMEOUT_ERRORS:
        return ErrorClass.TIMEOUT
    if error in RATE_ERRORS:
        return ErrorClass.RATE_LIMITED
    return ErrorClass.INVALID_REQUEST  # no_text, invalid_blocks, msg_too_long, invalid_payload …


def _chat_payload(message: OutboundEnvelope) -> dict[str, Any]:
    text = message.content.get("text")
    blocks = message.content.get("blocks")
    if not text and not blocks:
        raise DeliveryError(ErrorClass.INVALID_REQUEST, "a Slack message needs text or blocks")
    payload: dict[str, Any] = {}
    if text:
        payload["text"] = str(text)
    if blocks:
        payload["blocks"] = blocks
    return payload


def _error_word(response: httpx.Response) -> str | None:
    try:
        data = response.json()
    except ValueError:
        word = response.text.strip()
        return word if re.fullmatch(r"[a-z_]{2,64}", word) else None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return None


def _slack_error(
    response: httpx.Response, secrets: list[str], error: str | None, *, fixed_channel: bool = False
) -> DeliveryError:
    """The error a failed Slack answer means: by HTTP status when that says more (429 with its
    Retry-After, 5xx), by Slack's error word otherwise. For a webhook the channel is part of the
    configuration, so a channel error is a configuration error there."""
    status = response.status_code
    if status == 429 or status >= 500 or (error is None and not 200 <= status < 300):
        return provider_error(response, provider=PROVIDER, redact_values=secrets, detail=error)
    word = error or "invalid_response"
    error_class = classify(word)
    if fixed_channel and error_class is ErrorClass.INVALID_RECIPIENT:
        error_class = ErrorClass.CONFIGURATION
    return DeliveryError(
        error_class,
        f"{PROVIDER}: {word}",
        status=status,
        response=summarize(response.text, secrets) or None,
    )


def _webhook_error(response: httpx.Response, secrets: list[str]) -> DeliveryError:
    return _slack_error(response, secrets, _error_word(response), fixed_channel=True)


def _is_webhook_url(value: str) -> bool:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        raise ValueError("not a Slack incoming webhook URL") from None
    return url.scheme == "https" and WEBHOOK_PATH.match(url.path) is not None


# -- incoming webhook ------------------------------------------------------------------------


class SlackWebhookSettings(ConnectorSettings):
    username: str | None = Field(default=None, max_length=80)
    icon_emoji: str | None = Field(default=None, pattern=r"^:[a-z0-9_+-]+:$")
    api_base: ApiBase = "https://hooks.slack.com"


class SlackWebhookCredentials(ConnectorCredentials):
    webhook_url: Annotated[
        SecretStr,
        secret_check(
            _is_webhook_url,
            "not a Slack incoming webhook URL (https://hooks.slack.com/services/T…/B…/…)",
        ),
    ]


class SlackWebhookConnector(ConnectorType):
    type_name: ClassVar[str] = "slack_webhook"
    channel: ClassVar[Channel] = Channel.CHAT
    title: ClassVar[str] = "Slack incoming webhook"
    Settings = SlackWebhookSettings
    Credentials = SlackWebhookCredentials
    # Slack: about one message a second per incoming webhook, short bursts allowed.
    default_rate_per_second: ClassVar[float | None] = 1.0

    settings: SlackWebhookSettings
    credentials: SlackWebhookCredentials

    def _url(self) -> str:
        path = httpx.URL(self.credentials.webhook_url.get_secret_value()).path
        return f"{self.settings.api_base}{path}"

    async def _post(self, payload: dict[str, Any]) -> httpx.Response:
        if self.settings.username:
            payload["username"] = self.settings.username
        if self.settings.icon_emoji:
            payload["icon_emoji"] = self.settings.icon_emoji
        return await checked_request(
            self.context,
            "POST",
            self._url(),
            provider=PROVIDER,
            redact_values=secret_values(self.credentials),
            error=_webhook_error,
            json=payload,
        )

    async def send(self, message: OutboundEnvelope) -> SendResult:
        response = await self._post(_chat_payload(message))
        # Incoming webhooks answer a bare "ok" and no message id.
        return SendResult(status=response.status_code, response=response.text[:100] or None)

    async def test(self) -> TestResult:
        # A webhook has no read-only call; an empty payload is answered `no_text` (400) by a
        # live webhook and no_service/403/404 by a dead one, and posts nothing.
        try:
            await self._post({})
        except DeliveryError as exc:
            if exc.status == 400 and exc.error_class is ErrorClass.INVALID_REQUEST:
                return TestResult(ok=True, detail="the webhook is live", status=exc.status)
            return failed_test(exc)
        return TestResult(ok=True, detail="the webhook is live", status=200)


# -- Web API ---------------------------------------------------------------------------------


class SlackApiSettings(ConnectorSettings):
    username: str | None = Field(default=None, max_length=80)
    icon_emoji: str | None = Field(default=None, pattern=r"^:[a-z0-9_+-]+:$")
    unfurl_links: bool = False
    # Attach the delivery id as Slack message metadata (visible to apps, not to people).
    send_metadata: bool = True
    api_base: ApiBase = "https://slack.com/api"


class SlackApiCredentials(ConnectorCredentials):
    bot_token: Annotated[
        SecretStr,
        secret_check(
            lambda token: token.startswith(("xoxb-", "xoxp-", "xoxe.")),
            "not a Slack token (xoxb-…)",
        ),
    ] = Field(description="a bot token, xoxb-…")


class SlackApiConnector(ConnectorType):
    type_name: ClassVar[str] = "slack"
    channel: ClassVar[Channel] = Channel.CHAT
    title: ClassVar[str] = "Slack (bot, chat.postMessage)"
    Settings = SlackApiSettings
    Credentials = SlackApiCredentials
    # chat.postMessage: about one message a second per channel.
    default_rate_per_second: ClassVar[float | None] = 1.0

    settings: SlackApiSettings
    credentials: SlackApiCredentials

    async def _call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        secrets = secret_values(self.credentials)
        response = await request(
            self.context,
            "POST",
            f"{self.settings.api_base}/{method}",
            provider=PROVIDER,
            redact_values=secrets,
            json=payload,
            headers={"Authorization": f"Bearer {self.credentials.bot_token.get_secret_value()}"},
        )
        try:
            data = response.json()
        except ValueError:
            data = None
        if response.status_code < 300 and isinstance(data, dict) and data.get("ok") is True:
            return data
        raise _slack_error(response, secrets, _error_word(response))

    async def send(self, message: OutboundEnvelope) -> SendResult:
        if not message.recipient:
            raise DeliveryError(ErrorClass.INVALID_RECIPIENT, "no Slack channel to post to")
        payload = {"channel": message.recipient, **_chat_payload(message)}
        payload["unfurl_links"] = self.settings.unfurl_links
        if self.settings.username:
            payload["username"] = self.settings.username
        if self.settings.icon_emoji:
            payload["icon_emoji"] = self.settings.icon_emoji
        if self.settings.send_metadata:
            payload["metadata"] = {
                "event_type": METADATA_EVENT,
                "event_payload": {"delivery_id": message.delivery_id},
            }
        data = await self._call("chat.postMessage", payload)
        channel, ts = data.get("channel"), data.get("ts")
        return SendResult(
            # A message is named by its channel and timestamp together.
            provider_message_id=f"{channel}:{ts}" if channel and ts else None,
            status=200,
            response=summarize(f"posted to {channel} at {ts}"),
        )

    async def test(self) -> TestResult:
        return await probe(self._call("auth.test", {}), _authenticated)


def _authenticated(data: dict[str, Any]) -> TestResult:
    who = data.get("user") or data.get("bot_id") or "a bot"
    team = data.get("team") or data.get("team_id") or "a workspace"
    return TestResult(ok=True, detail=f"authenticated as {who} in {team}", status=200)
