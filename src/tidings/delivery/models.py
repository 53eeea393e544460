"""Connectors, routes, templates, outbound messages, their delivery attempts, idempotency keys.

The send API writes an `OutboundMessage` (what the caller asked for, rendered) and one job in one
transaction; the job's attempts are `DeliveryAttempt` rows. Credentials are stored only sealed
(envelope encryption, see tidings.infra.crypto): the record's data key wrapped by a keyring key.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db.base import Base, JSONDocument, new_id, utcnow


class CryptoKey(Base):
    """A keyring key: wraps records' data keys; itself wrapped by the root key from settings."""

    __tablename__ = "crypto_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    is_primary: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[datetime | None]


class Connector(Base):
    __tablename__ = "connectors"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(40))
    name: Mapped[str] = mapped_column(String(80))
    settings: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    # Sealed credentials: AES-256-GCM under a per-record data key wrapped by keyring key `key_id`.
    credentials_key_id: Mapped[str | None] = mapped_column(String(40))
    credentials_wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    credentials_ciphertext: Mapped[bytes | None] = mapped_column(LargeBinary)
    # What the API shows of them (``••••abcd``), written with them: reads open nothing.
    credentials_masked: Mapped[dict[str, str | None] | None] = mapped_column(JSONDocument)
    # active | broken (the provider refused our credentials) | disabled (by a person)
    status: Mapped[str] = mapped_column(String(16), default="active")
    status_reason: Mapped[str | None] = mapped_column(String(500))
    max_concurrency: Mapped[int | None]
    rate_per_second: Mapped[float | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]


class DeliveryRoute(Base):
    """A named, ordered fallback chain of connectors."""

    __tablename__ = "delivery_routes"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(80))
    connector_ids: Mapped[list[str]] = mapped_column(JSONDocument, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (UniqueConstraint("workspace_id", "name"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(80))
    description: Mapped[str] = mapped_column(String(500), default="")
    latest_version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None]


class TemplateVersion(Base):
    """An immutable version: per-channel parts (email subject/text/html, sms text, chat …)."""

    __tablename__ = "template_versions"

    template_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(primary_key=True)
    parts: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    sample_variables: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboundMessage(Base):
    """One message asked of the send API, with what it rendered to and where it stands."""

    __tablename__ = "outbound_messages"
    __table_args__ = (
        Index("ix_outbound_messages_workspace_created", "workspace_id", "created_at", "id"),
        Index("ix_outbound_messages_workspace_status", "workspace_id", "status"),
        Index("ix_outbound_messages_provider_message_id", "connector_id", "provider_message_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    api_key_id: Mapped[uuid.UUID | None]
    recipient: Mapped[str] = mapped_column(String(500))
    # Exactly one of connector_id / route_id was asked for; connector_id is then the one used.
    route_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("delivery_routes.id", ondelete="SET NULL")
    )
    connector_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("connectors.id", ondelete="SET NULL")
    )
    template_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("templates.id", ondelete="SET NULL")
    )
    template_version: Mapped[int | None]
    content: Mapped[dict[str, Any]] = mapped_column(JSONDocument)
    message_metadata: Mapped[dict[str, Any]] = mapped_column("metadata", JSONDocument, default=dict)
    # queued | sending | sent | delivered | failed | bounced | cancelled
    status: Mapped[str] = mapped_column(String(16))
    send_at: Mapped[datetime | None]
    job_id: Mapped[uuid.UUID | None]
    attempts: Mapped[int] = mapped_column(default=0)
    provider_message_id: Mapped[str | None] = mapped_column(String(255))
    error_class: Mapped[str | None] = mapped_column(String(40))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]


class DeliveryAttempt(Base):
    __tablename__ = "delivery_attempts"
    __table_args__ = (
        Index("ix_delivery_attempts_message", "message_id", "number"),
        Index("ix_delivery_attempts_connector_started", "connector_id", "started_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("outbound_messages.id", ondelete="CASCADE")
    )
    number: Mapped[int]
    connector_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("connectors.id", ondelete="SET NULL")
    )
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # sent | failed (permanent) | retry (retriable) | skipped (circuit open / connector broken)
    outcome: Mapped[str] = mapped_column(String(16))
    error_class: Mapped[str | None] = mapped_column(String(40))
    provider_status: Mapped[int | None]
    provider_response: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None]


class IdempotencyRecord(Base):
    """The first answer to a request made with an `Idempotency-Key`, kept for 24 hours."""

    __tablename__ = "idempotency_records"

    scope: Mapped[str] = mapped_column(String(120), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int | None]
    response: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)
