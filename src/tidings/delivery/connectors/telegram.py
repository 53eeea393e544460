"""Telegram through the Bot API: `POST {api_base}/bot<token>/sendMessage`, chat id = recipient.

Telegram puts the bot token in the URL path, so this module keeps it out of everything that
leaves it: error details and response excerpts are scrubbed, and a filter on httpx's logger
(which logs every request URL at INFO) masks `/bot<token>/` in its lines.

Telegram's error body is `{"ok": false, "error_code", "description", "parameters"}`; its own
`parameters.retry_after` is the wait a 429 asks for. A 403 ("bot was blocked by the user",
"kicked from the group") and a 400 naming the chat are about the recipient, not the token.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any, ClassVar, Literal

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
    chat_text,
)
from tidings.delivery.connectors.http import (
    ApiBase,
    json_object,
    parse_retry_after,
    probe,
    raise_for_provider_status,
    redact,
    request,
    secret_check,
    summarize,
)

PROVIDER = "Telegram"
MAX_TEXT = 4096  # characters, after entity parsing; longer texts are refused by Telegram
_BOT_PATH = re.compile(r"/bot\d+:[A-Za-z0-9_-]+")
_CHAT_ID = re.compile(r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31})$")
# 400 descriptions that mean the chat cannot be written to, whatever the message says.
_RECIPIENT_400 = re.compile(
    r"chat not found|user not found|peer_id_invalid|chat_id is empty|"
    r"group chat was upgraded|have no rights to send|not enough rights to send text|"
    r"need administrator rights|chat_write_forbidden|bot is not a member",
    re.IGNORECASE,
)


class _MaskBotToken(logging.Filter):
    """Masks `/bot<token>` in the URLs httpx logs for each request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(
            isinstance(arg, httpx.URL | str) and _BOT_PATH.search(str(arg)) for arg in record.args
        ):
            record.args = tuple(
                _BOT_PATH.sub("/bot***", str(arg)) if isinstance(arg, httpx.URL | str) else arg
                for arg in record.args
            )
        if isinstance(record.msg, str) and _BOT_PATH.search(record.msg):
            record.msg = _BOT_PATH.sub("/bot***", record.msg)
        return True


def _install_log_mask() -> None:
    for name in ("httpx", "httpcore"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _MaskBotToken) for f in logger.filters):
            logger.addFilter(_MaskBotToken())


_install_log_mask()


class TelegramSettings(ConnectorSettings):
    api_base: ApiBase = "https://api.telegram.org"
    parse_mode: Literal["HTML", "MarkdownV2", "Markdown"] | None = None
    disable_notification: bool = False
    disable_link_preview: bool = False


class TelegramCredentials(ConnectorCredentials):
    bot_token: Annotated[
        SecretStr,
        secret_check(
            lambda token: re.fullmatch(r"\d+:[A-Za-z0-9_-]+", token) is not None,
            "a bot token looks like 123456:ABC-DEF… (from @BotFather)",
        ),
    ] = Field(min_length=10, max_length=200)


class TelegramConnector(ConnectorType):
    type_name: ClassVar[str] = "telegram"
    channel: ClassVar[Channel] = Channel.CHAT
    title: ClassVar[str] = "Telegram bot"
    Settings: ClassVar[type[ConnectorSettings]] = TelegramSettings
    Credentials: ClassVar[type[ConnectorCredentials]] = TelegramCredentials
    # Telegram's broadcast limit for a bot; one chat takes about 1/s, a group 20/min.
    default_rate_per_second: ClassVar[float | None] = 30

    settings: TelegramSettings
    credentials: TelegramCredentials

    @property
    def _token(self) -> str:
        return self.credentials.bot_token.get_secret_value()

    @property
    def _secrets(self) -> list[str]:
        return [self._token]

    def _url(self, method: str) -> str:
        return f"{self.settings.api_base}/bot{self._token}/{method}"

    async def send(self, message: OutboundEnvelope) -> SendResult:
        chat_id = message.recipient.strip()
        if not _CHAT_ID.match(chat_id):
            raise DeliveryError(
                ErrorClass.INVALID_RECIPIENT,
                "a Telegram recipient is a numeric chat id or an @channel username",
            )
        text = chat_text(message, provider=PROVIDER, limit=MAX_TEXT)
        payload: dict[str, Any] = {
            "chat_id": int(chat_id) if chat_id.lstrip("-").isdigit() else chat_id,
            "text": text,
        }
        if self.settings.parse_mode:
            payload["parse_mode"] = self.settings.parse_mode
        if self.settings.disable_notification:
            payload["disable_notification"] = True
        if self.settings.disable_link_preview:
            payload["link_preview_options"] = {"is_disabled": True}
        response = await self._call("POST", "sendMessage", json=payload)
        result = _result(response)
        chat = result.get("chat") if isinstance(result, dict) else None
        message_id = result.get("message_id") if isinstance(result, dict) else None
        chat_part = chat.get("id", chat_id) if isinstance(chat, dict) else chat_id
        return SendResult(
            provider_message_id=f"{chat_part}:{message_id}" if message_id is not None else None,
            status=response.status_code,
            response=summarize(response.text, self._secrets),
        )

    async def test(self) -> TestResult:
        return await probe(self._call("GET", "getMe"), _bot_named, classed=False)

    async def _call(self, method: str, name: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await request(
                self.context,
                method,
                self._url(name),
                provider=PROVIDER,
                redact_values=self._secrets,
                **kwargs,
            )
            _raise_for_telegram(response, self._secrets)
        except DeliveryError as exc:
            # Belt and braces: whatever was said, the token is not in it.
            exc.detail = redact(exc.detail, self._secrets)
            exc.args = (exc.detail,)
            if exc.response:
                exc.response = redact(exc.response, self._secrets)
            raise
        return response


def _result(response: httpx.Response) -> Any:
    return json_object(response).get("result")


def _bot_named(response: httpx.Response) -> TestResult:
    me = _result(response)
    name = me.get("username") if isinstance(me, dict) else None
    return TestResult(
        ok=True, detail=f"the token belongs to @{name or 'an unnamed bot'}", status=200
    )


def _raise_for_telegram(response: httpx.Response, secrets: list[str]) -> None:
    body = json_object(response)
    if "ok" not in body:
        # Not the Bot API talking (a proxy's error page, a wrong api_base): by status alone.
        raise_for_provider_status(response, provider=PROVIDER, redact_values=secrets)
        raise DeliveryError(
            ErrorClass.SERVER_ERROR,
            f"{PROVIDER} answered {response.status_code} with something not from the Bot API",
            status=response.status_code,
            response=summarize(response.text, secrets),
        )
    if body.get("ok") is True:
        return
    code = body.get("error_code")
    status = code if isinstance(code, int) else response.status_code
    description = redact(str(body.get("description") or "no description"), secrets)
    parameters = body.get("parameters")
    parameters = parameters if isinstance(parameters, dict) else {}
    summary = summarize(response.text, secrets)
    retry_after: float | None = None
    if status == 429:
        hint = parameters.get("retry_after")
        retry_after = (
            float(hint)
            if isinstance(hint, int | float) and hint >= 0
            else parse_retry_after(response.headers.get("retry-after"))
        )
        error_class = ErrorClass.RATE_LIMITED
    elif status in (401, 404):  # 404: the token names no bot (or api_base is wrong)
        error_class = ErrorClass.AUTH
    elif _about_the_chat(status, description, parameters):
        error_class = ErrorClass.INVALID_RECIPIENT
    elif status >= 500:
        error_class = ErrorClass.SERVER_ERROR
    else:
        error_class = ErrorClass.INVALID_REQUEST
    if "migrate_to_chat_id" in parameters:
        description += f" (the chat is now {parameters['migrate_to_chat_id']})"
    raise DeliveryError(
        error_class,
        f"{PROVIDER} refused ({status}): {description}",
        status=status,
        retry_after=retry_after,
        response=summary,
    )


def _about_the_chat(status: int, description: str, parameters: dict[str, Any]) -> bool:
    # 403 is always the chat's side (blocked by the user, kicked from the group, a deactivated
    # user): the token is fine. A 400 is when it names the chat.
    if status == 403:
        return True
    return status == 400 and (
        bool(_RECIPIENT_400.search(description)) or "migrate_to_chat_id" in parameters
    )
