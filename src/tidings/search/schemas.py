"""API shapes of search results."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from tidings.messaging.kinds import ConversationKind


class SearchMessage(BaseModel):
    """The fields of `MessageOut` a result list needs (no reactions or mentions)."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    workspace_id: uuid.UUID
    seq: int
    sender_kind: str
    sender_id: uuid.UUID | None
    sender_name: str
    body: str
    thread_root_id: uuid.UUID | None
    reply_count: int
    created_at: datetime
    edited_at: datetime | None
    pinned: bool


class SearchConversation(BaseModel):
    id: uuid.UUID
    name: str | None  # None for direct and group messages
    kind: ConversationKind


class SearchHit(BaseModel):
    message: SearchMessage
    conversation: SearchConversation
    snippet: str = Field(
        description="HTML-escaped text around the match; matched words are wrapped in "
        "<mark>…</mark>, the only markup it ever contains."
    )


class SearchPage(BaseModel):
    items: list[SearchHit]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
