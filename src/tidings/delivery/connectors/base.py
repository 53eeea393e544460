"""The one small interface every connector implements, and the errors it raises.

A connector type is a class: its `Settings` and `Credentials` pydantic models describe what a
workspace configures (credentials are sealed at rest and never returned), `send` delivers one
rendered message and `test` asks the provider whether the configuration works. It never retries
by itself: it raises `DeliveryError` with an `ErrorClass`, and the delivery service decides
(retry with backoff and Retry-After, fail at once, mark the connector broken).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from tidings.infra.outbound import OutboundClient, OutboundPolicy

MAX_RESPONSE_SUMMARY = 2000


class Channel(StrEnum):
    """Which part of a template a connector sends."""

    EMAIL = "email"
    SMS = "sms"
    CHAT = "chat"
    # Outgoing webhooks receive every rendered part as JSON.
    WEBHOOK = "webhook"


class ErrorClass(StrEnum):
    RATE_LIMITED = "rate_limited"  # 429: retried, after Retry-After when given
    SERVER_ERROR = "server_error"  # 5xx
    TIMEOUT = "timeout"
    CONNECTION = "connection"  # refused, reset, DNS failure
    AUTH = "auth"  # 401/403: fails at once and marks the connector broken
    INVALID_REQUEST = "invalid_request"  # 400/404/413/422 and the like
    INVALID_RECIPIENT = "invalid_recipient"
    BLOCKED = "blocked"  # the outbound guard refused the address (SSRF)
    CONFIGURATION = "configuration"  # the connector's settings cannot work


RETRIABLE_ERRORS = frozenset(
    {ErrorClass.RATE_LIMITED, ErrorClass.SERVER_ERROR, ErrorClass.TIMEOUT, ErrorClass.CONNECTION}
)


class DeliveryError(Exception):
    """A provider did not take the message; `error_class` says whether retrying can help."""

    def __init__(
        self,
        error_class: ErrorClass,
        detail: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        response: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.error_class = error_class
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.response = response[:MAX_RESPONSE_SUMMARY] if response else response

    @property
    def retriable(self) -> bool:
        return self.error_class in RETRIABLE_ERRORS


@dataclass(frozen=True)
class OutboundEnvelope:
    """One message to deliver: the recipient and the template part for the connector's channel.

    `content` keys by channel — email: subject, text, html; sms: text; chat: text, blocks;
    webhook: the whole rendered content (every part) as given to the send API.
    `delivery_id` is stable across retries: connectors pass it to providers that deduplicate.
    """

    delivery_id: str
    recipient: str
    content: Mapping[str, Any]
    metadata: Mapping[str, Any] = field(default_factory=dict)


def chat_text(message: OutboundEnvelope, *, provider: str, limit: int) -> str:
    """The text part of a chat message, refused (invalid_request) when it is blank or longer
    than the `limit` characters the provider takes."""
    text = str(message.content.get("text") or "")
    if not text.strip():
        raise DeliveryError(ErrorClass.INVALID_REQUEST, "the chat message has no text")
    if len(text) > limit:
        raise DeliveryError(
            ErrorClass.INVALID_REQUEST,
            f"{provider} takes at most {limit} characters; the text has {len(text)}",
        )
    return text


@dataclass(frozen=True)
class SendResult:
    provider_message_id: str | None = None
    status: int | None = None
    response: str | None = None


@dataclass(frozen=True)
class TestResult:
    ok: bool
    detail: str
    status: int | None = None


@dataclass(frozen=True)
class StatusUpdate:
    """A provider's report on a message it took (from its signed status callback)."""

    provider_message_id: str
    status: str  # "delivered" | "bounced" | "failed"
    detail: str | None = None


@dataclass(frozen=True)
class ConnectorContext:
    """What the platform lends a connector: the guarded HTTP client and the outbound policy."""

    http: OutboundClient
    policy: OutboundPolicy
    timeout_seconds: float

    async def aclose(self) -> None:
        await self.http.aclose()


class ConnectorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ConnectorCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NoCredentials(ConnectorCredentials):
    pass


class ConnectorType(ABC):
    """Subclass per provider; register builtins in `registry`, or expose via an entry point."""

    type_name: ClassVar[str]  # the `type` of a connector in the API: "smtp", "twilio" …
    channel: ClassVar[Channel]
    title: ClassVar[str]
    Settings: ClassVar[type[ConnectorSettings]]
    Credentials: ClassVar[type[ConnectorCredentials]] = NoCredentials
    # Per-provider defaults; a connector's own settings may lower or raise them.
    default_rate_per_second: ClassVar[float | None] = None
    default_max_concurrency: ClassVar[int | None] = None

    def __init__(
        self,
        settings: ConnectorSettings,
        credentials: ConnectorCredentials,
        context: ConnectorContext,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.context = context

    @abstractmethod
    async def send(self, message: OutboundEnvelope) -> SendResult:
        """Deliver one message or raise DeliveryError."""

    @abstractmethod
    async def test(self) -> TestResult:
        """Ask the provider whether these settings and credentials work; never raises."""

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
        """Verify a provider's status callback by its signature scheme and parse it.

        Raises `CallbackRejected` when the signature is missing or wrong. Connector types whose
        provider sends no status callbacks keep this default.
        """
        raise CallbackRejected("this connector type receives no status callbacks")


class CallbackRejected(Exception):  # noqa: N818 - a verdict, reported as 401/400
    pass
