"""Kinds of conversations and senders: a module of its own so API shapes (and the SDK) need no
table definitions."""

from __future__ import annotations

from enum import StrEnum


class ConversationKind(StrEnum):
    PUBLIC = "public"  # a channel any non-guest member of the workspace may read and join
    PRIVATE = "private"  # a channel only its members know of
    DIRECT = "direct"  # a direct message between two people (or one person and themselves)
    GROUP = "group"  # a direct message between three to nine people
    SUPPORT = "support"  # a conversation with an external contact, answered by agents


CHANNEL_KINDS = frozenset({ConversationKind.PUBLIC, ConversationKind.PRIVATE})
DM_KINDS = frozenset({ConversationKind.DIRECT, ConversationKind.GROUP})


class SenderKind(StrEnum):
    USER = "user"
    APP = "app"  # an API key
    SYSTEM = "system"
    CONTACT = "contact"
