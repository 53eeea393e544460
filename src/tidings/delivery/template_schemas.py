"""API shapes of message templates: what is saved, what comes back, what a render produces.

Parts per channel: email (subject, text, html — text or html required), sms (text), chat (text
and/or blocks: a JSON list whose strings may be templated). Field types are checked here (a
wrong shape is 400 `validation_failed`); the rules across fields and the Jinja2 source itself are
checked by `tidings.delivery.templates` (400 `template_invalid`).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,79}$"
MAX_PART_CHARS = 131_072  # one string; the whole parts document is limited by the service too

Channel = Literal["email", "sms", "chat"]
CHANNELS: tuple[Channel, ...] = ("email", "sms", "chat")

_Source = Field(default=None, max_length=MAX_PART_CHARS)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmailParts(_In):
    subject: str | None = _Source
    text: str | None = _Source
    html: str | None = _Source


class SmsParts(_In):
    text: str = Field(max_length=MAX_PART_CHARS)


class ChatParts(_In):
    text: str | None = _Source
    blocks: list[Any] | None = None


class TemplateParts(_In):
    email: EmailParts | None = None
    sms: SmsParts | None = None
    chat: ChatParts | None = None


class TemplateCreateIn(_In):
    name: str = Field(pattern=NAME_PATTERN, description="1-80 of a-z 0-9 . _ -, unique")
    description: str = Field(default="", max_length=500)
    parts: TemplateParts
    sample_variables: dict[str, Any] = Field(default_factory=dict)


class TemplateReplaceIn(_In):
    """PUT: the whole content of the next version (name and description may change too)."""

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=500)
    parts: TemplateParts
    sample_variables: dict[str, Any] = Field(default_factory=dict)


class TemplateUpdateIn(_In):
    """PATCH: what is given changes; new parts or sample variables make a new version."""

    name: str | None = Field(default=None, pattern=NAME_PATTERN)
    description: str | None = Field(default=None, max_length=500)
    parts: TemplateParts | None = None
    sample_variables: dict[str, Any] | None = None


class PreviewIn(_In):
    version: int | None = Field(default=None, ge=1, description="latest when omitted")
    variables: dict[str, Any] = Field(
        default_factory=dict, description="merged over the version's sample variables"
    )
    channel: Channel | None = None


class AdHocPreviewIn(_In):
    parts: TemplateParts
    variables: dict[str, Any] = Field(default_factory=dict)
    channel: Channel | None = None


class TemplateOut(BaseModel):
    id: uuid.UUID
    workspace_id: uuid.UUID
    name: str
    description: str
    version: int = Field(description="the version whose parts are shown")
    latest_version: int
    channels: list[Channel]
    parts: TemplateParts
    sample_variables: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    version_created_at: datetime
    version_created_by: uuid.UUID | None


class TemplateSummaryOut(BaseModel):
    id: uuid.UUID
    name: str
    description: str
    latest_version: int
    created_at: datetime
    updated_at: datetime


class TemplatePage(BaseModel):
    items: list[TemplateSummaryOut]
    next_cursor: str | None


class TemplateVersionOut(BaseModel):
    version: int
    channels: list[Channel]
    created_at: datetime
    created_by: uuid.UUID | None


class TemplateVersionPage(BaseModel):
    items: list[TemplateVersionOut]
    next_cursor: str | None


class RenderedEmail(BaseModel):
    subject: str | None = None
    text: str | None = None
    html: str | None = None


class RenderedSms(BaseModel):
    text: str


class RenderedChat(BaseModel):
    text: str | None = None
    blocks: list[Any] | None = None


class RenderedContent(BaseModel):
    """What a template rendered to; `template_id`/`template_version` are None for ad-hoc parts."""

    template_id: uuid.UUID | None = None
    template_version: int | None = None
    email: RenderedEmail | None = None
    sms: RenderedSms | None = None
    chat: RenderedChat | None = None
