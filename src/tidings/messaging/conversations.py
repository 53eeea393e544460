"""Conversations: channels, direct messages and support threads, their members and read state."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from tidings.db.base import dialect_insert, utcnow
from tidings.db.database import Database
from tidings.events.service import NewEvent, emit, emit_many
from tidings.http.problems import Conflict, Forbidden, NotFound, Problem
from tidings.identity.models import Membership, User, Workspace
from tidings.identity.policy import ApiKeyPrincipal, Principal, Scope, UserPrincipal
from tidings.identity.roles import Role
from tidings.messaging import events
from tidings.messaging.access import (
    ConversationAccess,
    ConversationAction,
    authorize,
    check,
    key_may_see,
    load_access,
)
from tidings.messaging.kinds import CHANNEL_KINDS, DM_KINDS, ConversationKind
from tidings.messaging.models import Conversation, ConversationMember, Mention, Message
from tidings.messaging.schemas import MAX_GROUP_MEMBERS, ConversationOut, MemberOut

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")
GENERAL = "general"


def clean_channel_name(name: str | None) -> str:
    """Slack-style channel names: lower case, no spaces, 1 to 80 of a-z 0-9 - _."""
    cleaned = "-".join((name or "").strip().lower().lstrip("#").split())
    if not _NAME.match(cleaned):
        raise Problem(
            "A channel name is 1 to 80 lower-case letters, digits, '-' or '_'.",
            code="invalid_name",
        )
    return cleaned


def _dm_key(user_ids: Sequence[uuid.UUID]) -> str:
    return ",".join(sorted(str(u) for u in set(user_ids)))


class _DmOpenedMeanwhile(Exception):  # noqa: N818 - control flow: retry and find that DM
    pass


class Conversations:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- workspace-level -------------------------------------------------------------------

    async def _workspace_role(
        self, session: AsyncSession, principal: Principal, workspace_id: uuid.UUID
    ) -> Role | None:
        """The caller's role (None for an API key of this workspace); 404 when outside it or
        when the workspace was deleted."""
        live = and_(Workspace.id == workspace_id, Workspace.deleted_at.is_(None))
        if isinstance(principal, ApiKeyPrincipal):
            if principal.workspace_id != workspace_id or not await session.scalar(
                select(Workspace.id).where(live)
            ):
                raise NotFound("No such workspace.", code="workspace_not_found")
            return None
        raw = await session.scalar(
            select(Membership.role)
            .join(Workspace, Workspace.id == Membership.workspace_id)
            .where(live, Membership.user_id == principal.user_id)
        )
        if raw is None:
            raise NotFound("No such workspace.", code="workspace_not_found")
        return Role(raw)

    async def create(
        self,
        principal: Principal,
        workspace_id: uuid.UUID,
        *,
        kind: ConversationKind,
        name: str | None = None,
        topic: str = "",
        member_ids: Sequence[uuid.UUID] = (),
        is_default: bool = False,
    ) -> tuple[ConversationOut, bool]:
        """A new conversation (and True), or for a DM the existing one with those people."""
        arguments = (principal, workspace_id, kind, name, topic, member_ids, is_default)
        try:
            return await self._create(*arguments)
        except _DmOpenedMeanwhile:
            # Both people opened their DM at once: the second attempt finds the first one's.
            return await self._create(*arguments)

    async def _create(
        self,
        principal: Principal,
        workspace_id: uuid.UUID,
        kind: ConversationKind,
        name: str | None,
        topic: str,
        member_ids: Sequence[uuid.UUID],
        is_default: bool,
    ) -> tuple[ConversationOut, bool]:
        async with self._db.transaction() as session:
            role = await self._workspace_role(session, principal, workspace_id)
            if isinstance(principal, ApiKeyPrincipal):
                if not principal.scopes & {Scope.CONVERSATIONS_WRITE, Scope.ADMIN}:
                    raise Forbidden("Creating conversations needs conversations:write.")
                if kind in DM_KINDS:
                    raise Forbidden("API keys cannot open direct messages.", code="user_required")
                creator: uuid.UUID | None = None
            else:
                if role is Role.GUEST and kind in CHANNEL_KINDS:
                    raise Forbidden("Guests cannot create channels.", code="forbidden")
                creator = principal.user_id
            if kind is ConversationKind.SUPPORT:
                raise Problem("Support conversations come from inboxes.", code="invalid_kind")
            members = set(member_ids)
            if creator is not None:
                members.add(creator)
            await self._require_workspace_members(session, workspace_id, members)
            conversation = Conversation(
                workspace_id=workspace_id,
                kind=kind.value,
                topic=topic.strip(),
                created_by=creator,
                is_default=is_default,
                last_seq=0,
            )
            if kind in CHANNEL_KINDS:
                conversation.name = clean_channel_name(name)
            else:
                if name:
                    raise Problem("Direct messages have no name.", code="invalid_name")
                kind = self._dm_kind(members)
                conversation.kind = kind.value
                conversation.dm_key = _dm_key(list(members))
                existing = await session.scalar(
                    select(Conversation).where(
                        Conversation.workspace_id == workspace_id,
                        Conversation.dm_key == conversation.dm_key,
                    )
                )
                if existing is not None:
                    # Reopening it brings back anyone who had left (group members may leave).
                    await self._add(session, principal.actor_id, existing, members)
                    return events.conversation_out(existing, is_member=True), False
            channel_name, dm_key = conversation.name, conversation.dm_key
            session.add(conversation)
            try:
                await session.flush()
            except IntegrityError:
                if dm_key is not None:
                    raise _DmOpenedMeanwhile from None
                raise Conflict(
                    f"A channel named #{channel_name} exists already.", code="name_taken"
                ) from None
            session.add_all(
                ConversationMember(conversation_id=conversation.id, user_id=user_id)
                for user_id in members
            )
            out = events.conversation_out(conversation, member_count=len(members))
            stream = events.conversation_stream(conversation.id)
            await emit_many(
                session,
                [
                    NewEvent(
                        events.CONVERSATION_CREATED,
                        stream,
                        {"conversation": events.as_payload(out)},
                        workspace_id,
                    ),
                    NewEvent(
                        events.MEMBER_JOINED,
                        stream,
                        {
                            "conversation_id": str(conversation.id),
                            "user_ids": sorted(str(u) for u in members),
                            "by": principal.actor_id,
                        },
                        workspace_id,
                    ),
                ],
            )
        return out.model_copy(update={"is_member": creator is not None, "last_read_seq": 0}), True

    @staticmethod
    def _dm_kind(members: set[uuid.UUID]) -> ConversationKind:
        if len(members) <= 2:
            return ConversationKind.DIRECT
        if len(members) > MAX_GROUP_MEMBERS:
            raise Problem(
                f"A group message has at most {MAX_GROUP_MEMBERS} people; make a private channel.",
                code="too_many_members",
            )
        return ConversationKind.GROUP

    async def _require_workspace_members(
        self, session: AsyncSession, workspace_id: uuid.UUID, user_ids: set[uuid.UUID]
    ) -> None:
        if not user_ids:
            return
        found = set(
            await session.scalars(
                select(Membership.user_id).where(
                    Membership.workspace_id == workspace_id, Membership.user_id.in_(user_ids)
                )
            )
        )
        missing = user_ids - found
        if missing:
            raise Problem(
                "Some people are not members of this workspace.",
                code="not_workspace_members",
                user_ids=sorted(str(u) for u in missing),
            )

    async def list_for(
        self, principal: Principal, workspace_id: uuid.UUID, *, browse: bool = False
    ) -> list[ConversationOut]:
        """The caller's conversations with unread and mention counts; `browse` lists the
        workspace's public channels instead (with whether the caller is in each)."""
        async with self._db.read() as session:
            role = await self._workspace_role(session, principal, workspace_id)
            if isinstance(principal, ApiKeyPrincipal) or browse:
                return await self._browse(session, principal, workspace_id, role)
            return await self._mine(session, principal.user_id, workspace_id)

    async def _mine(
        self, session: AsyncSession, user_id: uuid.UUID, workspace_id: uuid.UUID
    ) -> list[ConversationOut]:
        unread, mentioned, members = _caller_counts(user_id)
        rows = await session.execute(
            select(Conversation, ConversationMember, unread, mentioned, members)
            .join(ConversationMember, ConversationMember.conversation_id == Conversation.id)
            .where(
                ConversationMember.user_id == user_id,
                Conversation.workspace_id == workspace_id,
            )
            .order_by(Conversation.kind, Conversation.name, Conversation.created_at)
        )
        return [
            events.conversation_out(
                conversation,
                is_member=True,
                last_read_seq=member.last_read_seq,
                unread_count=unread_count,
                mention_count=mention_count,
                muted=member.muted,
                member_count=member_count,
            )
            for conversation, member, unread_count, mention_count, member_count in rows.all()
        ]

    async def _browse(
        self,
        session: AsyncSession,
        principal: Principal,
        workspace_id: uuid.UUID,
        role: Role | None,
    ) -> list[ConversationOut]:
        if role is Role.GUEST:
            return await self._mine(session, principal.user_id, workspace_id)  # type: ignore[union-attr]
        query = select(Conversation).where(Conversation.workspace_id == workspace_id)
        if isinstance(principal, UserPrincipal):
            query = query.where(Conversation.kind == ConversationKind.PUBLIC.value)
        else:
            visible = [k.value for k in ConversationKind if key_may_see(k)]
            query = query.where(Conversation.kind.in_(visible))
        mine: set[uuid.UUID] = set()
        if isinstance(principal, UserPrincipal):
            mine = set(
                await session.scalars(
                    select(ConversationMember.conversation_id).where(
                        ConversationMember.user_id == principal.user_id
                    )
                )
            )
        rows = await session.scalars(query.order_by(Conversation.name, Conversation.created_at))
        return [events.conversation_out(c, is_member=c.id in mine) for c in rows]

    # -- one conversation ------------------------------------------------------------------

    async def get(self, principal: Principal, conversation_id: uuid.UUID) -> ConversationOut:
        async with self._db.read() as session:
            access = await authorize(session, principal, conversation_id, ConversationAction.READ)
            if access.member is None:
                count = await session.scalar(
                    select(func.count())
                    .select_from(ConversationMember)
                    .where(ConversationMember.conversation_id == conversation_id)
                )
                return self._out(access, member_count=count)
            # A member sees the same counts as in their conversation list, so a client that
            # learns of a conversation from an event starts with the right badges.
            unread, mentioned, members = _caller_counts(access.member.user_id)
            counts = (
                await session.execute(
                    select(unread, mentioned, members)
                    .select_from(Conversation)
                    .join(
                        ConversationMember,
                        ConversationMember.conversation_id == Conversation.id,
                    )
                    .where(
                        Conversation.id == conversation_id,
                        ConversationMember.user_id == access.member.user_id,
                    )
                )
            ).one()
            return self._out(
                access,
                unread_count=counts[0],
                mention_count=counts[1],
                member_count=counts[2],
            )

    @staticmethod
    def _out(access: ConversationAccess, **extra: Any) -> ConversationOut:
        member = access.member
        caller: dict[str, Any] = {"is_member": member is not None, **extra}
        if member is not None:
            caller.update(last_read_seq=member.last_read_seq, muted=member.muted)
        return events.conversation_out(access.conversation, **caller)

    async def update(
        self,
        principal: Principal,
        conversation_id: uuid.UUID,
        *,
        name: str | None = None,
        topic: str | None = None,
    ) -> ConversationOut:
        async with self._db.transaction() as session:
            access = await load_access(session, principal, conversation_id)
            conversation = access.conversation
            changes: dict[str, Any] = {}
            if name is not None:
                if conversation.kind not in {k.value for k in CHANNEL_KINDS}:
                    check(principal, access, ConversationAction.MANAGE)
                    raise Problem("Only channels have names.", code="invalid_name")
                cleaned = clean_channel_name(name)
                # The same name sent back with a new topic is not a rename.
                if cleaned != conversation.name:
                    check(principal, access, ConversationAction.MANAGE)
                    if conversation.is_default:
                        raise Conflict("#general keeps its name.", code="default_conversation")
                    changes["name"] = {"from": conversation.name, "to": cleaned}
                    conversation.name = cleaned
            if topic is not None:
                check(principal, access, ConversationAction.SET_TOPIC)
                if topic.strip() != conversation.topic:
                    changes["topic"] = {"from": conversation.topic, "to": topic.strip()}
                    conversation.topic = topic.strip()
            if name is None and topic is None:
                check(principal, access, ConversationAction.READ)
            self._refuse_if_archived(conversation)
            if changes:
                try:
                    await session.flush()
                except IntegrityError:
                    # The failed flush expired `conversation`: name it from the request.
                    raise Conflict(
                        f"A channel named #{changes['name']['to']} exists already.",
                        code="name_taken",
                    ) from None
                await self._emit_updated(session, principal, conversation, changes)
            return self._out(access)

    async def set_archived(
        self, principal: Principal, conversation_id: uuid.UUID, archived: bool
    ) -> ConversationOut:
        async with self._db.transaction() as session:
            access = await authorize(session, principal, conversation_id, ConversationAction.MANAGE)
            conversation = access.conversation
            if conversation.is_default:
                raise Conflict("#general cannot be archived.", code="default_conversation")
            if (conversation.archived_at is not None) != archived:
                conversation.archived_at = utcnow() if archived else None
                await self._emit_updated(
                    session, principal, conversation, {"archived": {"to": archived}}
                )
            return self._out(access)

    async def _emit_updated(
        self,
        session: AsyncSession,
        principal: Principal,
        conversation: Conversation,
        changes: dict[str, Any],
    ) -> None:
        out = events.conversation_out(conversation)
        await emit(
            session,
            events.CONVERSATION_UPDATED,
            stream_key=events.conversation_stream(conversation.id),
            workspace_id=conversation.workspace_id,
            payload={
                "conversation": events.as_payload(out),
                "changes": changes,
                "by": principal.actor_id,
            },
        )

    @staticmethod
    def _refuse_if_archived(conversation: Conversation) -> None:
        if conversation.archived_at is not None:
            raise Conflict("The conversation is archived.", code="conversation_archived")

    # -- members ---------------------------------------------------------------------------

    async def members(self, principal: Principal, conversation_id: uuid.UUID) -> list[MemberOut]:
        async with self._db.read() as session:
            await authorize(session, principal, conversation_id, ConversationAction.READ)
            rows = await session.execute(
                select(ConversationMember.user_id, User.display_name, ConversationMember.joined_at)
                .join(User, User.id == ConversationMember.user_id)
                .where(ConversationMember.conversation_id == conversation_id)
                .order_by(ConversationMember.joined_at, User.display_name)
            )
            return [MemberOut(user_id=u, display_name=n, joined_at=j) for u, n, j in rows.all()]

    async def join(self, user: UserPrincipal, conversation_id: uuid.UUID) -> ConversationOut:
        async with self._db.transaction() as session:
            access = await load_access(session, user, conversation_id)
            if access.is_member:
                check(user, access, ConversationAction.READ)
                return self._out(access)
            check(user, access, ConversationAction.JOIN)
            self._refuse_if_archived(access.conversation)
            await self._add(session, user.actor_id, access.conversation, {user.user_id})
            member = await session.get(ConversationMember, (conversation_id, user.user_id))
            joined = ConversationAccess(
                access.conversation, access.workspace_role, member, access.caller_name
            )
            return self._out(joined)

    async def add_members(
        self, principal: Principal, conversation_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
    ) -> list[uuid.UUID]:
        """Add people; returns those who were not members before."""
        async with self._db.transaction() as session:
            access = await authorize(
                session, principal, conversation_id, ConversationAction.ADD_MEMBERS
            )
            conversation = access.conversation
            if conversation.kind in {k.value for k in DM_KINDS}:
                raise Conflict(
                    "The people of a direct message are fixed; start a new one.",
                    code="dm_members_fixed",
                )
            self._refuse_if_archived(conversation)
            wanted = set(user_ids)
            await self._require_workspace_members(session, conversation.workspace_id, wanted)
            return await self._add(session, principal.actor_id, conversation, wanted)

    async def _add(
        self,
        session: AsyncSession,
        actor: str,
        conversation: Conversation,
        user_ids: set[uuid.UUID],
    ) -> list[uuid.UUID]:
        if not user_ids:
            return []
        # New members start reading from now: history is there, but not as unread. ON CONFLICT
        # because the saga and the membership consumer may add the same person concurrently.
        insert_into = dialect_insert(session)
        added = sorted(
            await session.scalars(
                insert_into(ConversationMember)
                .values(
                    [
                        {
                            "conversation_id": conversation.id,
                            "user_id": user_id,
                            "last_read_seq": conversation.last_seq,
                            "joined_at": utcnow(),
                            "muted": False,
                        }
                        for user_id in user_ids
                    ]
                )
                .on_conflict_do_nothing()
                .returning(ConversationMember.user_id)
            )
        )
        if not added:
            return []
        await emit(
            session,
            events.MEMBER_JOINED,
            stream_key=events.conversation_stream(conversation.id),
            workspace_id=conversation.workspace_id,
            payload={
                "conversation_id": str(conversation.id),
                "user_ids": [str(u) for u in added],
                "by": actor,
            },
        )
        return added

    async def remove_member(
        self, principal: Principal, conversation_id: uuid.UUID, user_id: uuid.UUID
    ) -> None:
        leaving = isinstance(principal, UserPrincipal) and principal.user_id == user_id
        async with self._db.transaction() as session:
            access = await load_access(session, principal, conversation_id, lock=True)
            conversation = access.conversation
            if leaving:
                check(principal, access, ConversationAction.READ)
            else:
                check(principal, access, ConversationAction.REMOVE_MEMBERS)
            if conversation.is_default:
                raise Conflict("Everyone stays in #general.", code="default_conversation")
            if conversation.kind == ConversationKind.DIRECT.value:
                raise Conflict("A direct message cannot be left.", code="dm_members_fixed")
            if conversation.kind == ConversationKind.GROUP.value and not leaving:
                raise Conflict("People leave a group message themselves.", code="dm_members_fixed")
            result = await session.execute(
                delete(ConversationMember).where(
                    ConversationMember.conversation_id == conversation_id,
                    ConversationMember.user_id == user_id,
                )
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise NotFound("Not a member of this conversation.", code="member_not_found")
            await emit(
                session,
                events.MEMBER_LEFT,
                stream_key=events.conversation_stream(conversation_id),
                workspace_id=conversation.workspace_id,
                payload={
                    "conversation_id": str(conversation_id),
                    "user_ids": [str(user_id)],
                    "by": principal.actor_id,
                    "left": leaving,
                },
            )

    async def set_muted(
        self, user: UserPrincipal, conversation_id: uuid.UUID, muted: bool
    ) -> ConversationOut:
        async with self._db.transaction() as session:
            access = await self._own_membership(session, user, conversation_id)
            assert access.member is not None  # noqa: S101 - checked by _own_membership
            if access.member.muted != muted:
                access.member.muted = muted
                await emit(
                    session,
                    events.MUTE_UPDATED,
                    stream_key=events.user_stream(user.user_id),
                    workspace_id=access.conversation.workspace_id,
                    payload={"conversation_id": str(conversation_id), "muted": muted},
                )
            return self._out(access)

    async def mark_read(
        self, user: UserPrincipal, conversation_id: uuid.UUID, seq: int
    ) -> ConversationOut:
        """Move the caller's read position forward (never back) to `seq`."""
        async with self._db.transaction() as session:
            access = await self._own_membership(session, user, conversation_id)
            member = access.member
            assert member is not None  # noqa: S101 - checked by _own_membership
            target = min(seq, access.conversation.last_seq)
            if target > member.last_read_seq:
                await session.execute(
                    update(ConversationMember)
                    .where(
                        ConversationMember.conversation_id == conversation_id,
                        ConversationMember.user_id == user.user_id,
                        ConversationMember.last_read_seq < target,
                    )
                    .values(last_read_seq=target)
                )
                member.last_read_seq = target
                await emit(
                    session,
                    events.READ_UPDATED,
                    stream_key=events.user_stream(user.user_id),
                    workspace_id=access.conversation.workspace_id,
                    payload={"conversation_id": str(conversation_id), "last_read_seq": target},
                )
            return self._out(access)

    async def _own_membership(
        self, session: AsyncSession, user: UserPrincipal, conversation_id: uuid.UUID
    ) -> ConversationAccess:
        access = await load_access(session, user, conversation_id)
        check(user, access, ConversationAction.READ)
        if access.member is None:
            raise Forbidden("Join the conversation first.", code="not_a_member")
        return access

    # -- the workspace-creation saga's steps -----------------------------------------------

    async def create_default(
        self, workspace_id: uuid.UUID, created_by: uuid.UUID, *, conversation_id: uuid.UUID
    ) -> uuid.UUID:
        """`#general`: public, everyone in it. Members are added as they join the workspace."""
        async with self._db.transaction() as session:
            conversation = Conversation(
                id=conversation_id,
                workspace_id=workspace_id,
                kind=ConversationKind.PUBLIC.value,
                name=GENERAL,
                topic="Everyone in the workspace",
                created_by=created_by,
                is_default=True,
                last_seq=0,
            )
            session.add(conversation)
            await session.flush()
            await emit(
                session,
                events.CONVERSATION_CREATED,
                stream_key=events.conversation_stream(conversation.id),
                workspace_id=workspace_id,
                payload={"conversation": events.as_payload(events.conversation_out(conversation))},
            )
            return conversation.id

    async def discard(self, conversation_id: uuid.UUID) -> None:
        """Compensation of `create_default` (its messages and members go with it); idempotent."""
        async with self._db.transaction() as session:
            await session.execute(delete(Conversation).where(Conversation.id == conversation_id))

    async def join_defaults(
        self, session: AsyncSession, workspace_id: uuid.UUID, user_id: uuid.UUID, actor: str
    ) -> None:
        """Put a new workspace member in the workspace's default conversations."""
        defaults = await session.scalars(
            select(Conversation).where(
                Conversation.workspace_id == workspace_id, Conversation.is_default.is_(True)
            )
        )
        for conversation in list(defaults):
            await self._add(session, actor, conversation, {user_id})

    async def leave_workspace(
        self, session: AsyncSession, workspace_id: uuid.UUID, user_id: uuid.UUID, actor: str
    ) -> None:
        """Someone left the workspace: they leave its conversations too."""
        conversations = list(
            await session.scalars(
                select(Conversation)
                .join(ConversationMember, ConversationMember.conversation_id == Conversation.id)
                .where(
                    Conversation.workspace_id == workspace_id,
                    ConversationMember.user_id == user_id,
                )
                # Their rows first, in the order batches of sends take them (see `load_access`).
                .order_by(Conversation.id)
                .with_for_update(of=Conversation, key_share=True)
            )
        )
        for conversation in conversations:
            await session.execute(
                delete(ConversationMember).where(
                    ConversationMember.conversation_id == conversation.id,
                    ConversationMember.user_id == user_id,
                )
            )
            await emit(
                session,
                events.MEMBER_LEFT,
                stream_key=events.conversation_stream(conversation.id),
                workspace_id=workspace_id,
                payload={
                    "conversation_id": str(conversation.id),
                    "user_ids": [str(user_id)],
                    "by": actor,
                    "left": False,
                },
            )

    # -- for the realtime gateway ----------------------------------------------------------

    async def readable(self, principal: Principal, conversation_id: uuid.UUID) -> Conversation:
        """The conversation if `principal` may read it (404 otherwise)."""
        async with self._db.read() as session:
            access = await authorize(session, principal, conversation_id, ConversationAction.READ)
            return access.conversation

    async def require_member(self, user: UserPrincipal, conversation_id: uuid.UUID) -> Conversation:
        async with self._db.read() as session:
            return (await self._own_membership(session, user, conversation_id)).conversation


def _caller_counts(user_id: uuid.UUID) -> tuple[Any, Any, Any]:
    """Correlated counts for a row of Conversation joined to the caller's ConversationMember:
    unread top-level messages from others, unread mentions of the caller, and members."""
    unread = (
        select(func.count())
        .select_from(Message)
        .where(
            Message.conversation_id == Conversation.id,
            Message.seq > ConversationMember.last_read_seq,
            Message.thread_root_id.is_(None),
            Message.deleted_at.is_(None),
            or_(Message.sender_id.is_(None), Message.sender_id != user_id),
        )
        .scalar_subquery()
    )
    mentioned = (
        select(func.count())
        .select_from(Mention)
        .where(
            Mention.user_id == user_id,
            Mention.conversation_id == Conversation.id,
            Mention.seq > ConversationMember.last_read_seq,
        )
        .scalar_subquery()
    )
    everyone = aliased(ConversationMember)
    members = (
        select(func.count())
        .select_from(everyone)
        .where(everyone.conversation_id == Conversation.id)
        .scalar_subquery()
    )
    return unread, mentioned, members


# Built once, on the tables (Core, not ORM entities): every WebSocket connect runs it, and a
# connect storm (the clients of a restarted process) spent more CPU building and compiling the
# ORM statement than reading the rows.
_conversations, _members, _memberships = (
    Conversation.__table__,
    ConversationMember.__table__,
    Membership.__table__,
)
_MEMBER_CONVERSATIONS = (
    select(_conversations.c.id, _conversations.c.workspace_id)
    .select_from(
        _conversations.join(_members, _members.c.conversation_id == _conversations.c.id).join(
            _memberships,
            and_(
                _memberships.c.workspace_id == _conversations.c.workspace_id,
                _memberships.c.user_id == _members.c.user_id,
            ),
        )
    )
    .where(_members.c.user_id == bindparam("user_id"))
)


async def member_conversations(
    session: AsyncSession, user_id: uuid.UUID
) -> dict[uuid.UUID, uuid.UUID]:
    """Every conversation `user_id` is a member of, with its workspace, in the caller's read
    (the realtime gateway reads it with the rest of a connection's rooms)."""
    rows = await session.execute(_MEMBER_CONVERSATIONS, {"user_id": user_id})
    return {conversation: workspace for conversation, workspace in rows.all()}  # noqa: C416 - typed pairs
