"""Who may do what in a conversation.

One query resolves the conversation, the caller's workspace role and conversation membership;
`check` then answers from those facts alone. A caller who may not read a conversation gets 404
(its existence is not revealed); one who may read but not do this gets 403.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.http.problems import Forbidden, NotFound
from tidings.identity.models import ApiKey, Membership, User, Workspace
from tidings.identity.policy import ApiKeyPrincipal, Principal, Scope, UserPrincipal
from tidings.identity.roles import Role
from tidings.messaging.kinds import DM_KINDS, ConversationKind
from tidings.messaging.models import Conversation, ConversationMember


class ConversationAction(StrEnum):
    READ = "conversation.read"  # what it is and who is in it
    READ_MESSAGES = "conversation.read_messages"
    POST = "conversation.post"
    JOIN = "conversation.join"
    SET_TOPIC = "conversation.set_topic"
    MANAGE = "conversation.manage"  # rename, archive, unarchive
    ADD_MEMBERS = "conversation.add_members"
    REMOVE_MEMBERS = "conversation.remove_members"
    MODERATE = "conversation.moderate"  # delete others' messages


_WORKSPACE_MANAGERS = frozenset({Role.OWNER, Role.ADMIN})
_SUPPORT_STAFF = frozenset({Role.OWNER, Role.ADMIN, Role.AGENT})
_API_KEY_SCOPES: dict[ConversationAction, frozenset[str]] = {
    ConversationAction.READ: frozenset(Scope),
    # A send-only or channel-managing key does not read what people wrote.
    ConversationAction.READ_MESSAGES: frozenset({Scope.MESSAGES_READ, Scope.ADMIN}),
    ConversationAction.POST: frozenset({Scope.MESSAGES_SEND, Scope.ADMIN}),
    ConversationAction.JOIN: frozenset(),
    ConversationAction.SET_TOPIC: frozenset({Scope.CONVERSATIONS_WRITE, Scope.ADMIN}),
    ConversationAction.MANAGE: frozenset({Scope.CONVERSATIONS_WRITE, Scope.ADMIN}),
    ConversationAction.ADD_MEMBERS: frozenset({Scope.CONVERSATIONS_WRITE, Scope.ADMIN}),
    ConversationAction.REMOVE_MEMBERS: frozenset({Scope.CONVERSATIONS_WRITE, Scope.ADMIN}),
    ConversationAction.MODERATE: frozenset({Scope.ADMIN}),
}


class ConversationFacts(Protocol):
    """What the rules read of a conversation: an ORM row or a `ConversationRef`."""

    @property
    def workspace_id(self) -> uuid.UUID: ...
    @property
    def kind(self) -> str: ...
    @property
    def created_by(self) -> uuid.UUID | None: ...


class AccessFacts(Protocol):
    """What the rules read of a caller's relation to a conversation."""

    @property
    def conversation(self) -> ConversationFacts: ...
    @property
    def workspace_role(self) -> Role | None: ...
    @property
    def is_member(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class ConversationRef:
    """A conversation as a send sees it: plain values read at the driver, no ORM entity."""

    id: uuid.UUID
    workspace_id: uuid.UUID
    kind: str
    created_by: uuid.UUID | None
    archived: bool

    @classmethod
    def of(cls, conversation: Conversation) -> ConversationRef:
        """The same facts from an ORM row the session already holds."""
        return cls(
            conversation.id,
            conversation.workspace_id,
            conversation.kind,
            conversation.created_by,
            conversation.archived_at is not None,
        )


@dataclass(frozen=True, slots=True)
class SendAccess:
    """A sender's relation to a conversation (`messaging.store.load_send_access`)."""

    conversation: ConversationRef
    workspace_role: Role | None  # None for API keys and Tidings itself
    is_member: bool
    caller_name: str


@dataclass(frozen=True)
class ConversationAccess:
    conversation: Conversation
    workspace_role: Role | None  # None for API keys
    member: ConversationMember | None
    # The caller's name as a sender: a user's display name, an API key's name.
    caller_name: str

    @property
    def is_member(self) -> bool:
        return self.member is not None


def may_read(kind: ConversationKind, role: Role | None, is_member: bool) -> bool:
    """Whether a workspace member with `role` may read a conversation of `kind`."""
    if role is None:
        return False
    if is_member:
        return True
    if kind is ConversationKind.PUBLIC:
        return role is not Role.GUEST
    if kind is ConversationKind.SUPPORT:
        return role in _SUPPORT_STAFF
    return False


def key_may_see(kind: ConversationKind) -> bool:
    """API keys act for an app, not a person: direct messages stay between their people."""
    return kind not in DM_KINDS


def _user_may(action: ConversationAction, access: AccessFacts, user_id: uuid.UUID) -> bool:
    conversation = access.conversation
    kind = ConversationKind(conversation.kind)
    staff = kind is ConversationKind.SUPPORT and access.workspace_role in _SUPPORT_STAFF
    manages = access.workspace_role in _WORKSPACE_MANAGERS
    owns = conversation.created_by == user_id or manages
    match action:
        case ConversationAction.READ | ConversationAction.READ_MESSAGES:
            return True
        case ConversationAction.POST | ConversationAction.SET_TOPIC:
            return access.is_member or staff
        case ConversationAction.JOIN:
            return kind is ConversationKind.PUBLIC or staff
        case ConversationAction.MANAGE:
            return kind not in {ConversationKind.DIRECT, ConversationKind.GROUP} and (
                owns or (staff and access.is_member)
            )
        case ConversationAction.ADD_MEMBERS:
            # Guests are invited in; they do not bring others.
            guest = access.workspace_role is Role.GUEST
            return (access.is_member and not guest) or staff or manages
        case ConversationAction.REMOVE_MEMBERS:
            return owns or staff
        case ConversationAction.MODERATE:
            # Others' messages are for workspace admins (and support staff) to delete; making a
            # channel or opening a DM does not make someone a moderator of the other people.
            return manages or staff


def check(principal: Principal, access: AccessFacts, action: ConversationAction) -> None:
    """Raise 404 if `principal` may not read the conversation, 403 if it may not do `action`."""
    conversation = access.conversation
    if isinstance(principal, ApiKeyPrincipal):
        kind = ConversationKind(conversation.kind)
        if principal.workspace_id != conversation.workspace_id or not key_may_see(kind):
            raise conversation_not_found()
        if not principal.scopes & _API_KEY_SCOPES[action]:
            raise Forbidden(f"The API key's scopes do not allow {action.value}.")
        return
    kind = ConversationKind(conversation.kind)
    if not may_read(kind, access.workspace_role, access.is_member):
        raise conversation_not_found()
    if not _user_may(action, access, principal.user_id):
        code = "not_a_member" if action is ConversationAction.POST else "forbidden"
        raise Forbidden(f"You may not do {action.value} in this conversation.", code=code)


def conversation_not_found() -> NotFound:
    return NotFound("No such conversation.", code="conversation_not_found")


async def load_access(
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    *,
    lock: bool = False,
) -> ConversationAccess:
    """The conversation with the caller's relation to it; 404 if it does not exist.

    `lock` takes the conversation's row first, as senders do: a change to one of its messages
    or members then never waits for a batch of sends that already holds the conversation's
    event stream while that batch waits for the change's row (a deadlock on PostgreSQL).
    """
    if isinstance(principal, UserPrincipal):
        query = (
            select(Conversation, Membership.role, ConversationMember, User.display_name)
            .join(Workspace, Workspace.id == Conversation.workspace_id)
            .outerjoin(User, User.id == principal.user_id)
            .outerjoin(
                Membership,
                and_(
                    Membership.workspace_id == Conversation.workspace_id,
                    Membership.user_id == principal.user_id,
                ),
            )
            .outerjoin(
                ConversationMember,
                and_(
                    ConversationMember.conversation_id == Conversation.id,
                    ConversationMember.user_id == principal.user_id,
                ),
            )
            .where(Conversation.id == conversation_id, Workspace.deleted_at.is_(None))
        )
        if lock:  # FOR NO KEY UPDATE OF conversations, what a sender takes (SQLite: nothing)
            query = query.with_for_update(of=Conversation, key_share=True)
        row = (await session.execute(query)).first()
        if row is None:
            raise conversation_not_found()
        conversation, role, member, name = row
        return ConversationAccess(conversation, Role(role) if role else None, member, name or "")
    key_query = (
        select(Conversation, ApiKey.name)
        .join(Workspace, Workspace.id == Conversation.workspace_id)
        .join(ApiKey, ApiKey.id == principal.key_id)
        .where(Conversation.id == conversation_id, Workspace.deleted_at.is_(None))
    )
    if lock:
        key_query = key_query.with_for_update(of=Conversation, key_share=True)
    key_row = (await session.execute(key_query)).first()
    if key_row is None:
        raise conversation_not_found()
    return ConversationAccess(key_row[0], None, None, key_row[1])


async def authorize(
    session: AsyncSession,
    principal: Principal,
    conversation_id: uuid.UUID,
    action: ConversationAction,
    *,
    lock: bool = False,
) -> ConversationAccess:
    access = await load_access(session, principal, conversation_id, lock=lock)
    check(principal, access, action)
    return access
