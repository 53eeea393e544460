"""Shapes of the send API for the SDK: what `SendClient` returns, and what it accepts.

The fields of the answers are defined here once (`*Fields`) and shared with the server, whose
`tidings.delivery.schemas` subclass them with constructors from its database rows; this module
imports nothing of the server (the SDK must not import SQLAlchemy). The SDK's models ignore
unknown fields, so a newer server does not break an older client, and are frozen.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Required, TypedDict

from pydantic import BaseModel, ConfigDict, Field

#: Where a message stops moving for good (`sent` too: a provider may never report delivery).
FINAL_STATUSES = frozenset({"delivered", "bounced", "failed", "cancelled"})
SETTLED_STATUSES = FINAL_STATUSES | {"sent"}


class _Shape(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# -- the fields of the answers, shared with the server's schemas ----------------------------


class AttemptFields(BaseModel):
    number: int
    connector_id: uuid.UUID | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str  # sent, failed, retry, skipped
    error_class: str | None
    provider_status: int | None
    provider_response: str | None
    latency_ms: float | None


class MessageFields(BaseModel):
    id: uuid.UUID
    workspace_id: uuid.UUID
    to: str
    status: str
    connector_id: uuid.UUID | None
    route_id: uuid.UUID | None
    template_id: uuid.UUID | None
    template_version: int | None
    content: dict[str, Any]
    metadata: dict[str, Any]
    send_at: datetime | None
    attempts: int
    provider_message_id: str | None
    error_class: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None


class ConnectorFields(BaseModel):
    id: uuid.UUID
    workspace_id: uuid.UUID
    type: str
    name: str
    settings: dict[str, Any]
    credentials: dict[str, str | None] = Field(description="Masked: never the values")
    status: str
    status_reason: str | None
    max_concurrency: int | None
    rate_per_second: float | None
    created_at: datetime
    updated_at: datetime


class ConnectorStatsFields(BaseModel):
    connector_id: uuid.UUID
    window_hours: float
    sent: int
    failed: dict[str, int] = Field(description="Failed or retried attempts by error class")
    skipped: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    circuit: str


class RouteFields(BaseModel):
    id: uuid.UUID
    workspace_id: uuid.UUID
    name: str
    connectors: list[uuid.UUID]
    connector_names: list[str]
    created_at: datetime
    updated_at: datetime


# -- the SDK's models ------------------------------------------------------------------------


class Accepted(_Shape):
    """A send taken durably: delivery happens later (`wait()` for the outcome)."""

    id: uuid.UUID
    status: str
    send_at: datetime | None = None
    #: The server answered a repeat of an earlier request with the same idempotency key.
    replayed: bool = False


class Attempt(_Shape, AttemptFields):
    """One try of one connector."""


class OutboundMessage(_Shape, MessageFields):
    """A message of the send API and where it stands; `attempt_log` only from `get()`."""

    attempt_log: list[Attempt] | None = None

    @property
    def settled(self) -> bool:
        return self.status in SETTLED_STATUSES


class OutboundPage(_Shape):
    """A page of the delivery log, newest first; pass `next_cursor` for the next one."""

    items: list[OutboundMessage]
    next_cursor: str | None


class Connector(_Shape, ConnectorFields):
    pass


class ConnectorTest(_Shape):
    ok: bool
    detail: str
    status: int | None


class ConnectorStats(_Shape, ConnectorStatsFields):
    pass


class Route(_Shape, RouteFields):
    pass


# -- what the client takes ------------------------------------------------------------------


class Content(TypedDict, total=False):
    """The message itself when no template renders it; channels use what they understand."""

    subject: str
    text: str
    html: str
    blocks: list[Any]


class SendFields(TypedDict, total=False):
    """A send besides its recipient: a connector or route (id or name), a template or content."""

    connector: str | uuid.UUID
    route: str | uuid.UUID
    template: str | uuid.UUID
    template_version: int
    variables: dict[str, Any]
    content: Content
    metadata: dict[str, Any]
    send_at: datetime | str  # aware datetimes only: the server refuses naive ones


class SendOptions(SendFields, total=False):
    """`send()`'s keywords: the fields, and the idempotency key (generated when not given)."""

    idempotency_key: str


class SendItem(SendFields, total=False):
    """One message of `send_batch()`."""

    to: Required[str]


class MessageFilters(TypedDict, total=False):
    """Filters of the delivery log; `limit` is the page size (1 to 200)."""

    status: str
    connector_id: str | uuid.UUID
    to: str
    created_after: datetime | str
    created_before: datetime | str
    limit: int


class ConnectorOptions(TypedDict, total=False):
    settings: dict[str, Any]
    credentials: dict[str, Any]
    max_concurrency: int
    rate_per_second: float


__all__ = [
    "FINAL_STATUSES",
    "SETTLED_STATUSES",
    "Accepted",
    "Attempt",
    "Connector",
    "ConnectorOptions",
    "ConnectorStats",
    "ConnectorTest",
    "Content",
    "MessageFilters",
    "OutboundMessage",
    "OutboundPage",
    "Route",
    "SendFields",
    "SendItem",
    "SendOptions",
]
