"""API shapes of the send API, the delivery log, connectors and routes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from tidings.client.send_models import (
    AttemptFields,
    ConnectorFields,
    ConnectorStatsFields,
    MessageFields,
    RouteFields,
)
from tidings.delivery.connectors_service import ConnectorView
from tidings.delivery.models import Connector, DeliveryAttempt, DeliveryRoute, OutboundMessage

if TYPE_CHECKING:
    from tidings.delivery.service import MessageView

MAX_RECIPIENT = 500
MAX_TEXT = 100_000


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContentIn(_In):
    subject: str | None = Field(default=None, max_length=998)
    text: str | None = Field(default=None, max_length=MAX_TEXT)
    html: str | None = Field(default=None, max_length=MAX_TEXT * 5)
    blocks: list[Any] | None = Field(default=None, max_length=100)


class SendIn(_In):
    to: str = Field(min_length=1, max_length=MAX_RECIPIENT, description="Recipient address")
    connector: str | None = Field(default=None, description="Connector id or name")
    route: str | None = Field(default=None, description="Route id or name (a fallback chain)")
    template: str | None = Field(default=None, description="Template id or name")
    template_version: int | None = Field(default=None, ge=1)
    variables: dict[str, Any] = Field(default_factory=dict)
    content: ContentIn | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    send_at: AwareDatetime | None = None
    # Users (not API keys) name the workspace; an API key's own workspace is implied.
    workspace_id: uuid.UUID | None = None


class BatchIn(_In):
    messages: list[SendIn] = Field(min_length=1, max_length=1000)
    workspace_id: uuid.UUID | None = None


class AcceptedOut(BaseModel):
    id: uuid.UUID
    status: str
    send_at: datetime | None = None

    @classmethod
    def of(cls, message: OutboundMessage | MessageView) -> AcceptedOut:
        return cls(id=message.id, status=message.status, send_at=message.send_at)


class BatchAcceptedOut(BaseModel):
    messages: list[AcceptedOut]

    @staticmethod
    def json_of(messages: Sequence[MessageView]) -> bytes:
        """The model of `messages` as JSON, byte for byte as pydantic writes it, without a
        model object per message: a batch is up to a thousand."""
        return orjson.dumps(
            {
                "messages": [
                    {"id": m.id, "status": m.status, "send_at": m.send_at} for m in messages
                ]
            },
            option=orjson.OPT_UTC_Z,
        )


class AttemptOut(AttemptFields):
    @classmethod
    def of(cls, attempt: DeliveryAttempt) -> AttemptOut:
        return cls(
            number=attempt.number,
            connector_id=attempt.connector_id,
            started_at=attempt.started_at,
            finished_at=attempt.finished_at,
            outcome=attempt.outcome,
            error_class=attempt.error_class,
            provider_status=attempt.provider_status,
            provider_response=attempt.provider_response,
            latency_ms=round(attempt.latency_ms, 3) if attempt.latency_ms is not None else None,
        )


class MessageOut(MessageFields):
    attempt_log: list[AttemptOut] | None = None

    @classmethod
    def of(
        cls, message: OutboundMessage, attempts: list[DeliveryAttempt] | None = None
    ) -> MessageOut:
        return cls(
            id=message.id,
            workspace_id=message.workspace_id,
            to=message.recipient,
            status=message.status,
            connector_id=message.connector_id,
            route_id=message.route_id,
            template_id=message.template_id,
            template_version=message.template_version,
            content=message.content,
            metadata=message.message_metadata,
            send_at=message.send_at,
            attempts=message.attempts,
            provider_message_id=message.provider_message_id,
            error_class=message.error_class,
            error=message.error,
            created_at=message.created_at,
            updated_at=message.updated_at,
            sent_at=message.sent_at,
            finished_at=message.finished_at,
            attempt_log=[AttemptOut.of(a) for a in attempts] if attempts is not None else None,
        )


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


class ConnectorIn(_In):
    type: str = Field(min_length=1, max_length=40)
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    settings: dict[str, Any] = Field(default_factory=dict)
    credentials: dict[str, Any] = Field(default_factory=dict)
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    rate_per_second: float | None = Field(default=None, gt=0, le=100_000)


class ConnectorUpdateIn(_In):
    name: str | None = Field(
        default=None, min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$"
    )
    settings: dict[str, Any] | None = None
    # Replaces every credential at once; leave out to keep the current ones.
    credentials: dict[str, Any] | None = None
    max_concurrency: int | None = Field(default=None, ge=1, le=10_000)
    rate_per_second: float | None = Field(default=None, gt=0, le=100_000)


class ConnectorOut(ConnectorFields):
    @classmethod
    def of(cls, view: ConnectorView) -> ConnectorOut:
        row = view.row
        return cls(
            id=row.id,
            workspace_id=row.workspace_id,
            type=row.type,
            name=row.name,
            settings=row.settings,
            credentials=view.masked_credentials,
            status=row.status,
            status_reason=row.status_reason,
            max_concurrency=row.max_concurrency,
            rate_per_second=row.rate_per_second,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


class ConnectorTypeOut(BaseModel):
    type: str
    title: str
    channel: str
    settings_schema: dict[str, Any]
    credentials_schema: dict[str, Any]


class TestOut(BaseModel):
    ok: bool
    detail: str
    status: int | None


class ConnectorStatsOut(ConnectorStatsFields):
    pass


class RouteIn(_In):
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$")
    connectors: list[str] = Field(min_length=1, max_length=10)


class RouteUpdateIn(_In):
    name: str | None = Field(
        default=None, min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]*$"
    )
    connectors: list[str] | None = Field(default=None, min_length=1, max_length=10)


class RouteOut(RouteFields):
    @classmethod
    def of(cls, route: DeliveryRoute, chain: list[Connector]) -> RouteOut:
        return cls(
            id=route.id,
            workspace_id=route.workspace_id,
            name=route.name,
            connectors=[c.id for c in chain],
            connector_names=[c.name for c in chain],
            created_at=route.created_at,
            updated_at=route.updated_at,
        )
