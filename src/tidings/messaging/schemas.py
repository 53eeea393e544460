"""API shapes of conversations and messages; events carry the same shapes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tidings.messaging.kinds import ConversationKind

MAX_BODY_CHARS = 10_000
MAX_CLIENT_ID = 100
MAX_GROUP_MEMBERS = 9


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConversationCreateIn(_In):
    kind: Literal["public", "private", "direct", "group"]
    name: str | None = Field(default=None, max_length=80)
    topic: str = Field(default="", max_length=250)
    # Other participants (DMs) or initial members (channels); the caller is always included.
    member_ids: list[uuid.UUID] = Field(default_factory=list, max_length=1000)


class ConversationUpdateIn(_In):
    name: str | None = Field(default=None, max_length=80)
    topic: str | None = Field(default=None, max_length=250)


class MembersIn(_In):
    user_ids: list[uuid.UUID] = Field(min_length=1, max_length=1000)


class MuteIn(_In):
    muted: bool


class ReadIn(_In):
    seq: int = Field(ge=0)


class MessageIn(_In):
    body: str = Field(min_length=1, max_length=MAX_BODY_CHARS)
    client_id: str | None = Field(default=None, min_length=1, max_length=MAX_CLIENT_ID)
    thread_root_id: uuid.UUID | None = None


class MessageEditIn(_In):
    body: str = Field(min_length=1, max_length=MAX_BODY_CHARS)


class ConversationOut(BaseModel):
    id: uuid.UUID
    workspace_id: uuid.UUID
    kind: ConversationKind
    name: str | None
    topic: str
    is_default: bool
    created_by: uuid.UUID | None
    created_at: datetime
    archived_at: datetime | None
    last_seq: int
    last_message_at: datetime | None
    member_count: int | None = None
    # The caller's own state; absent when the caller is not a member (or is an API key).
    is_member: bool = False
    last_read_seq: int | None = None
    unread_count: int | None = None
    mention_count: int | None = None
    muted: bool | None = None


class MemberOut(BaseModel):
    user_id: uuid.UUID
    display_name: str
    joined_at: datetime


class ReactionOut(BaseModel):
    emoji: str
    count: int
    user_ids: list[uuid.UUID]


class MessageOut(BaseModel):
    id: uuid.UUID
    conversation_id: uuid.UUID
    workspace_id: uuid.UUID
    seq: int
    sender_kind: str
    sender_id: uuid.UUID | None
    sender_name: str
    body: str
    client_id: str | None
    mentions: dict[str, Any]
    thread_root_id: uuid.UUID | None
    reply_count: int
    last_reply_at: datetime | None
    created_at: datetime
    edited_at: datetime | None
    deleted: bool
    pinned: bool
    reactions: list[ReactionOut] = Field(default_factory=list)


class MessagePage(BaseModel):
    messages: list[MessageOut]
    has_more_before: bool
    has_more_after: bool


class MessageEditOut(BaseModel):
    previous_body: str
    edited_by: uuid.UUID | None
    edited_at: datetime


class ThreadOut(BaseModel):
    root: MessageOut
    replies: list[MessageOut]
    has_more: bool
    participant_ids: list[uuid.UUID]
    following: bool
