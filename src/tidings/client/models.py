"""What the SDK returns: the server's own API shapes, and the realtime frames.

REST answers are the pydantic models the server itself serialises (`tidings.identity.schemas`,
`tidings.messaging.schemas`), re-exported here, so a field added on the server is a field here.
Realtime frames are described below; unknown fields are ignored so a newer server does not
break an older client.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from tidings.identity.schemas import (
    ApiKeyCreatedOut,
    ApiKeyOut,
    InvitationCreatedOut,
    InvitationOut,
    RegisteredOut,
    SessionOut,
    TokensOut,
    UserOut,
    WorkspaceOut,
)
from tidings.identity.schemas import MemberOut as WorkspaceMemberOut
from tidings.messaging.schemas import (
    ConversationOut,
    MessageEditOut,
    MessageOut,
    MessagePage,
    ReactionOut,
    ThreadOut,
)
from tidings.messaging.schemas import MemberOut as ConversationMemberOut


class Ticket(BaseModel):
    """A one-time ticket to open the WebSocket (valid for `expires_in` seconds)."""

    ticket: str
    expires_in: int
    url: str


# -- realtime frames --------------------------------------------------------------------------


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ResumeLimits(_Frame):
    max_events: int
    max_age_seconds: float


class Hello(_Frame):
    """First frame of every connection, including each reconnection.

    `positions` is the last sequence of every stream the connection follows at connect time.
    """

    type: Literal["hello"]
    v: int
    connection_id: str
    user_id: uuid.UUID
    node: str | None = None
    heartbeat_seconds: float
    typing_ttl_ms: int
    resume: ResumeLimits
    positions: dict[str, int]
    presence: dict[str, str] = Field(default_factory=dict)


class Event(_Frame):
    """A committed change on a stream (`conversation:<id>` or `personal:<user id>`).

    `seq` is gap-free per stream; the connection hands each (stream, seq) to you once, in order.
    """

    type: Literal["event"]
    stream: str
    seq: int
    event: str
    id: uuid.UUID
    at: datetime
    data: dict[str, Any]

    @property
    def conversation_id(self) -> uuid.UUID | None:
        """The conversation the event is about (also for `personal:` events that name one)."""
        prefix, _, rest = self.stream.partition(":")
        if prefix == "conversation":
            return uuid.UUID(rest)
        named = self.data.get("conversation_id")
        return uuid.UUID(named) if isinstance(named, str) else None

    @property
    def message(self) -> MessageOut | None:
        """The message of `message.*` events (created, edited, deleted, pinned, unpinned)."""
        raw = self.data.get("message")
        return MessageOut.model_validate(raw) if isinstance(raw, dict) else None

    @property
    def conversation(self) -> ConversationOut | None:
        """The conversation of `conversation.created` / `conversation.updated` events."""
        raw = self.data.get("conversation")
        return ConversationOut.model_validate(raw) if isinstance(raw, dict) else None


class ResyncRequired(_Frame):
    """Events of `stream` were missed and cannot be replayed: refetch its state over REST.

    Reasons from the server: `too_many`, `too_old`, `expired`, `unknown_position`,
    `not_subscribed` (the stream is no longer yours). From the SDK itself: `new_stream` — after
    a reconnection, a stream that began while disconnected (a conversation joined meanwhile).
    Events after this frame continue the stream in order.
    """

    type: Literal["resync_required"]
    stream: str
    reason: str


class TypingFrame(_Frame):
    type: Literal["typing"]
    conversation_id: uuid.UUID
    user_id: uuid.UUID
    state: Literal["start", "stop"]
    ttl_ms: int


class PresenceFrame(_Frame):
    type: Literal["presence"]
    user_id: uuid.UUID
    status: str  # "online", "away" or "offline"


class ErrorFrame(_Frame):
    """A problem the server reported outside any command's reply (e.g. rate limiting, a bad
    `typing`). Replies to your commands raise `TidingsError` from the call instead."""

    type: Literal["error"]
    ref: str | int | None = None
    problem: dict[str, Any]

    @property
    def code(self) -> str:
        return str(self.problem.get("code", "unknown"))


class Ack(_Frame):
    type: Literal["ack"]
    ref: str | int | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Resumed(_Frame):
    type: Literal["resumed"]
    ref: str | int | None = None
    streams: dict[str, dict[str, Any]] = Field(default_factory=dict)


class Pong(_Frame):
    type: Literal["pong"]
    ref: str | int | None = None


AnyFrame = Annotated[
    Hello
    | Event
    | ResyncRequired
    | TypingFrame
    | PresenceFrame
    | ErrorFrame
    | Ack
    | Resumed
    | Pong,
    Field(discriminator="type"),
]
#: What `async for frame in connection` yields (acks, pongs and resume replies are consumed by
#: the calls that wait for them).
ServerFrame = Hello | Event | ResyncRequired | TypingFrame | PresenceFrame | ErrorFrame

frame_adapter: TypeAdapter[AnyFrame] = TypeAdapter(AnyFrame)

__all__ = [
    "Ack",
    "ApiKeyCreatedOut",
    "ApiKeyOut",
    "ConversationMemberOut",
    "ConversationOut",
    "ErrorFrame",
    "Event",
    "Hello",
    "InvitationCreatedOut",
    "InvitationOut",
    "MessageEditOut",
    "MessageOut",
    "MessagePage",
    "Pong",
    "PresenceFrame",
    "ReactionOut",
    "RegisteredOut",
    "ResumeLimits",
    "Resumed",
    "ResyncRequired",
    "ServerFrame",
    "SessionOut",
    "ThreadOut",
    "Ticket",
    "TokensOut",
    "TypingFrame",
    "UserOut",
    "WorkspaceMemberOut",
    "WorkspaceOut",
    "frame_adapter",
]
