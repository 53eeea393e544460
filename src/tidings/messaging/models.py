"""Conversations, their members, messages, edits, reactions, mentions and thread followers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from tidings.db.base import Base, JSONDocument, new_id, utcnow


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        # Channel names are unique per workspace; DMs have no name.
        Index(
            "uq_conversations_workspace_name",
            "workspace_id",
            "name",
            unique=True,
            sqlite_where=text("name IS NOT NULL"),
            postgresql_where=text("name IS NOT NULL"),
        ),
        # One conversation per set of DM participants: creating it again finds it.
        Index(
            "uq_conversations_workspace_dm_key",
            "workspace_id",
            "dm_key",
            unique=True,
            sqlite_where=text("dm_key IS NOT NULL"),
            postgresql_where=text("dm_key IS NOT NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(80))
    topic: Mapped[str] = mapped_column(String(250), default="")
    dm_key: Mapped[str | None] = mapped_column(String(400))
    # `#general`: every member joins it, nobody leaves or archives it.
    is_default: Mapped[bool] = mapped_column(default=False)
    created_by: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    archived_at: Mapped[datetime | None]
    # The last message sequence handed out; its row lock orders the conversation's senders.
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_message_at: Mapped[datetime | None]


class ConversationMember(Base):
    __tablename__ = "conversation_members"
    __table_args__ = (Index("ix_conversation_members_user", "user_id"),)

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    joined_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Messages with a sequence at or below this are read.
    last_read_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    muted: Mapped[bool] = mapped_column(default=False)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
        # G1: a sender's client id names one message (retried sends find it).
        Index(
            "uq_messages_sender_client_id",
            "conversation_id",
            "sender_id",
            "client_id",
            unique=True,
            sqlite_where=text("client_id IS NOT NULL"),
            postgresql_where=text("client_id IS NOT NULL"),
        ),
        Index("ix_messages_thread", "thread_root_id", "seq"),
        Index("ix_messages_workspace_created", "workspace_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    workspace_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("workspaces.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    sender_kind: Mapped[str] = mapped_column(String(16))
    # A user id, an API key id or a contact id, by `sender_kind`; None for system messages.
    sender_id: Mapped[uuid.UUID | None]
    sender_name: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str | None] = mapped_column(String(100))
    # A digest of what was sent with `client_id`: the same id with other content is refused.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    mentions: Mapped[dict[str, Any]] = mapped_column(JSONDocument, default=dict)
    thread_root_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE")
    )
    reply_count: Mapped[int] = mapped_column(default=0)
    last_reply_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    edited_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]
    pinned_at: Mapped[datetime | None]
    pinned_by: Mapped[uuid.UUID | None]


@dataclass(slots=True)
class WrittenMessage:
    """A `messages` row as a send just wrote it, outside any session: `Message`'s columns
    without the ORM's bookkeeping (building a `Message` costs ~20 µs, this ~1 µs)."""

    id: uuid.UUID
    conversation_id: uuid.UUID
    workspace_id: uuid.UUID
    seq: int
    sender_kind: str
    sender_id: uuid.UUID | None
    sender_name: str
    body: str
    client_id: str | None
    fingerprint: str | None
    mentions: dict[str, Any]
    thread_root_id: uuid.UUID | None
    reply_count: int
    last_reply_at: datetime | None
    created_at: datetime
    edited_at: datetime | None
    deleted_at: datetime | None
    pinned_at: datetime | None
    pinned_by: uuid.UUID | None


class MessageEdit(Base):
    """The body a message had before each edit (its history)."""

    __tablename__ = "message_edits"
    __table_args__ = (Index("ix_message_edits_message", "message_id", "edited_at"),)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    message_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    previous_body: Mapped[str] = mapped_column(Text)
    edited_by: Mapped[uuid.UUID | None]
    edited_at: Mapped[datetime] = mapped_column(default=utcnow)


class Reaction(Base):
    __tablename__ = "reactions"

    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    emoji: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Mention(Base):
    """A user named in a message, for mention counts and notifications."""

    __tablename__ = "mentions"
    __table_args__ = (Index("ix_mentions_user_conversation", "user_id", "conversation_id", "seq"),)

    message_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    seq: Mapped[int] = mapped_column(BigInteger)


class ThreadFollower(Base):
    """Who follows a thread: its participants unless they unfollowed, and explicit followers."""

    __tablename__ = "thread_followers"
    __table_args__ = (Index("ix_thread_followers_user", "user_id"),)

    root_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    following: Mapped[bool] = mapped_column(default=True)
    # Replied in the thread (or wrote its root), as opposed to only following it.
    participant: Mapped[bool] = mapped_column(default=False)
