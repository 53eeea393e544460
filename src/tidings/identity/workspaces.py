"""Workspaces, memberships and invitations, with the rules for roles."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.http.problems import Conflict, Forbidden, NotFound, Problem
from tidings.identity import audit
from tidings.identity.accounts import ClientInfo, normalize_email
from tidings.identity.audit import AuditAction
from tidings.identity.models import Invitation, Membership, User, Workspace
from tidings.identity.policy import (
    Action,
    ApiKeyPrincipal,
    Decision,
    Principal,
    UserPrincipal,
    decide,
    may_assign,
)
from tidings.identity.roles import Role
from tidings.identity.tokens import INVITATION_PREFIX, digest, new_secret

DEFAULT_INVITATION_TTL = timedelta(days=7)
MAX_INVITATION_TTL = timedelta(days=30)


@dataclass(frozen=True)
class Access:
    """A workspace the principal may act on, with the principal's role there."""

    workspace: Workspace
    role: Role | None  # None for API keys


@dataclass(frozen=True)
class MemberView:
    user_id: uuid.UUID
    email: str
    display_name: str
    role: Role
    joined_at: datetime


def _actor(principal: Principal) -> tuple[str, str]:
    return principal.kind, principal.actor_id


class Workspaces:
    def __init__(self, db: Database) -> None:
        self._db = db

    # -- access -----------------------------------------------------------------------------

    async def authorize(
        self, principal: Principal, workspace_id: uuid.UUID, action: Action, client: ClientInfo
    ) -> Access:
        """The workspace if `principal` may do `action` there; 404 if it may not see it, 403
        (audited) if it may see it but not do this."""
        async with self._db.read() as session:
            workspace = await session.scalar(
                select(Workspace).where(
                    Workspace.id == workspace_id, Workspace.deleted_at.is_(None)
                )
            )
            role = None
            if workspace is not None and isinstance(principal, UserPrincipal):
                raw = await session.scalar(
                    select(Membership.role).where(
                        Membership.workspace_id == workspace_id,
                        Membership.user_id == principal.user_id,
                    )
                )
                role = Role(raw) if raw is not None else None
        if workspace is None:
            raise NotFound("No such workspace.", code="workspace_not_found")
        verdict = decide(principal, action, workspace_id, role)
        if verdict is Decision.HIDDEN:
            raise NotFound("No such workspace.", code="workspace_not_found")
        if verdict is Decision.FORBIDDEN:
            await self._audit_denied(principal, workspace_id, action, client)
            raise Forbidden(f"Your role does not allow {action.value}.", action=action.value)
        return Access(workspace, role)

    async def _audit_denied(
        self, principal: Principal, workspace_id: uuid.UUID, action: Action, client: ClientInfo
    ) -> None:
        actor_type, actor_id = _actor(principal)
        async with self._db.transaction() as session:
            await audit.record(
                session,
                "access.denied",
                AuditAction.PERMISSION_DENIED,
                actor_type=actor_type,
                actor_id=actor_id,
                workspace_id=workspace_id,
                ip=client.ip,
                details={"action": action.value},
            )

    # -- workspaces -------------------------------------------------------------------------

    # Creating a workspace is a saga (see `tidings.onboarding`): these are identity's steps.

    async def create_record(
        self, user: UserPrincipal, name: str, client: ClientInfo, *, workspace_id: uuid.UUID
    ) -> Workspace:
        """The workspace row alone; `add_owner` makes it usable. The id comes from the caller
        so a failure after the commit can still be compensated by id."""
        async with self._db.transaction() as session:
            workspace = Workspace(id=workspace_id, name=_clean_name(name), created_by=user.user_id)
            session.add(workspace)
            await session.flush()
            await audit.record(
                session,
                "workspace.created",
                AuditAction.WORKSPACE_CREATED,
                actor_type="user",
                actor_id=str(user.user_id),
                workspace_id=workspace.id,
                target_type="workspace",
                target_id=str(workspace.id),
                ip=client.ip,
                details={"name": workspace.name},
            )
        return workspace

    async def add_owner(
        self, workspace_id: uuid.UUID, user: UserPrincipal, client: ClientInfo
    ) -> None:
        async with self._db.transaction() as session:
            session.add(
                Membership(workspace_id=workspace_id, user_id=user.user_id, role=Role.OWNER.value)
            )
            await audit.record(
                session,
                "member.joined",
                AuditAction.MEMBER_JOINED,
                actor_type="user",
                actor_id=str(user.user_id),
                workspace_id=workspace_id,
                target_type="user",
                target_id=str(user.user_id),
                ip=client.ip,
                details={"role": Role.OWNER.value},
            )

    async def remove_owner(self, workspace_id: uuid.UUID, user: UserPrincipal) -> None:
        """Compensation of `add_owner` for a workspace whose creation failed."""
        async with self._db.transaction() as session:
            await session.execute(
                delete(Membership).where(
                    Membership.workspace_id == workspace_id, Membership.user_id == user.user_id
                )
            )

    async def discard(
        self, workspace_id: uuid.UUID, user: UserPrincipal, client: ClientInfo
    ) -> None:
        """Compensation of `create_record`: the workspace never became usable, so it goes.
        Idempotent: nothing happens when there is no such workspace."""
        async with self._db.transaction() as session:
            deleted = await session.execute(delete(Workspace).where(Workspace.id == workspace_id))
            if not deleted.rowcount:  # type: ignore[attr-defined]
                return
            await audit.record(
                session,
                "workspace.deleted",
                AuditAction.WORKSPACE_DELETED,
                actor_type="user",
                actor_id=str(user.user_id),
                workspace_id=workspace_id,
                target_type="workspace",
                target_id=str(workspace_id),
                ip=client.ip,
                details={"reason": "creation_failed"},
            )

    async def list_for(self, principal: Principal) -> list[tuple[Workspace, Role | None]]:
        async with self._db.read() as session:
            if isinstance(principal, ApiKeyPrincipal):
                workspace = await session.get(Workspace, principal.workspace_id)
                alive = workspace is not None and workspace.deleted_at is None
                return [(workspace, None)] if alive and workspace else []
            rows = await session.execute(
                select(Workspace, Membership.role)
                .join(Membership, Membership.workspace_id == Workspace.id)
                .where(Membership.user_id == principal.user_id, Workspace.deleted_at.is_(None))
                .order_by(Workspace.created_at)
            )
            return [(workspace, Role(role)) for workspace, role in rows.all()]

    async def rename(
        self, principal: Principal, access: Access, name: str, client: ClientInfo
    ) -> Workspace:
        actor_type, actor_id = _actor(principal)
        async with self._db.transaction() as session:
            workspace = await session.get(Workspace, access.workspace.id)
            assert workspace is not None  # noqa: S101 - authorised a moment ago
            previous, workspace.name = workspace.name, _clean_name(name)
            await audit.record(
                session,
                "workspace.updated",
                AuditAction.WORKSPACE_UPDATED,
                actor_type=actor_type,
                actor_id=actor_id,
                workspace_id=workspace.id,
                target_type="workspace",
                target_id=str(workspace.id),
                ip=client.ip,
                details={"name": {"from": previous, "to": workspace.name}},
            )
        return workspace

    async def delete(self, principal: Principal, access: Access, client: ClientInfo) -> None:
        actor_type, actor_id = _actor(principal)
        async with self._db.transaction() as session:
            await session.execute(
                update(Workspace)
                .where(Workspace.id == access.workspace.id)
                .values(deleted_at=utcnow())
            )
            await audit.record(
                session,
                "workspace.deleted",
                AuditAction.WORKSPACE_DELETED,
                actor_type=actor_type,
                actor_id=actor_id,
                workspace_id=access.workspace.id,
                target_type="workspace",
                target_id=str(access.workspace.id),
                ip=client.ip,
            )

    # -- members ----------------------------------------------------------------------------

    async def members(self, workspace_id: uuid.UUID) -> list[MemberView]:
        async with self._db.read() as session:
            rows = await session.execute(
                select(
                    User.id, User.email, User.display_name, Membership.role, Membership.joined_at
                )
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.workspace_id == workspace_id)
                .order_by(Membership.joined_at)
            )
            return [
                MemberView(user_id, email, name, Role(role), joined)
                for user_id, email, name, role, joined in rows.all()
            ]

    async def change_role(
        self,
        principal: UserPrincipal,
        access: Access,
        member_id: uuid.UUID,
        role: Role,
        client: ClientInfo,
    ) -> MemberView:
        async with self._db.transaction() as session:
            membership = await self._membership(session, access.workspace.id, member_id)
            current = Role(membership.role)
            assert access.role is not None  # noqa: S101 - users always have a role here
            if not may_assign(access.role, current, role):
                raise Forbidden("Only owners can make or change owners.", code="owner_required")
            if current is Role.OWNER and role is not Role.OWNER:
                await self._keep_an_owner(session, access.workspace.id)
            membership.role = role.value
            await audit.record(
                session,
                "member.role_changed",
                AuditAction.MEMBER_ROLE_CHANGED,
                actor_type="user",
                actor_id=str(principal.user_id),
                workspace_id=access.workspace.id,
                target_type="user",
                target_id=str(member_id),
                ip=client.ip,
                details={"from": current.value, "to": role.value},
            )
        return next(m for m in await self.members(access.workspace.id) if m.user_id == member_id)

    async def remove(
        self, principal: UserPrincipal, access: Access, member_id: uuid.UUID, client: ClientInfo
    ) -> None:
        leaving = member_id == principal.user_id
        async with self._db.transaction() as session:
            membership = await self._membership(session, access.workspace.id, member_id)
            current = Role(membership.role)
            assert access.role is not None  # noqa: S101
            if not leaving and not may_assign(access.role, current, Role.GUEST):
                raise Forbidden("Only owners can remove owners.", code="owner_required")
            if current is Role.OWNER:
                await self._keep_an_owner(session, access.workspace.id)
            await session.delete(membership)
            await audit.record(
                session,
                "member.left" if leaving else "member.removed",
                AuditAction.MEMBER_LEFT if leaving else AuditAction.MEMBER_REMOVED,
                actor_type="user",
                actor_id=str(principal.user_id),
                workspace_id=access.workspace.id,
                target_type="user",
                target_id=str(member_id),
                ip=client.ip,
            )

    async def _membership(
        self, session: AsyncSession, workspace_id: uuid.UUID, user_id: uuid.UUID
    ) -> Membership:
        membership = await session.get(Membership, (workspace_id, user_id))
        if membership is None:
            raise NotFound("No such member.", code="member_not_found")
        return membership

    async def _keep_an_owner(self, session: AsyncSession, workspace_id: uuid.UUID) -> None:
        owners = await session.scalar(
            select(func.count())
            .select_from(Membership)
            .where(Membership.workspace_id == workspace_id, Membership.role == Role.OWNER.value)
        )
        if (owners or 0) <= 1:
            raise Conflict(
                "A workspace needs an owner: make someone else owner first.",
                code="last_owner",
            )

    # -- invitations ------------------------------------------------------------------------

    async def invite(
        self,
        principal: UserPrincipal,
        access: Access,
        *,
        role: Role,
        email: str | None,
        ttl: timedelta | None,
        client: ClientInfo,
    ) -> tuple[Invitation, str]:
        assert access.role is not None  # noqa: S101
        if not may_assign(access.role, None, role):
            raise Forbidden("Only owners can invite owners.", code="owner_required")
        ttl = ttl or DEFAULT_INVITATION_TTL
        if not timedelta(minutes=5) <= ttl <= MAX_INVITATION_TTL:
            raise Problem("Invitations last 5 minutes to 30 days.", code="invalid_expiry")
        token = new_secret(INVITATION_PREFIX)
        async with self._db.transaction() as session:
            invitation = Invitation(
                workspace_id=access.workspace.id,
                email=normalize_email(email) if email else None,
                role=role.value,
                token_hash=digest(token),
                invited_by=principal.user_id,
                expires_at=utcnow() + ttl,
            )
            session.add(invitation)
            await session.flush()
            await audit.record(
                session,
                "member.invited",
                AuditAction.MEMBER_INVITED,
                actor_type="user",
                actor_id=str(principal.user_id),
                workspace_id=access.workspace.id,
                target_type="invitation",
                target_id=str(invitation.id),
                ip=client.ip,
                details={"role": role.value, "email": invitation.email},
            )
        return invitation, token

    async def invitations(self, workspace_id: uuid.UUID) -> list[Invitation]:
        async with self._db.read() as session:
            rows = await session.scalars(
                select(Invitation)
                .where(
                    Invitation.workspace_id == workspace_id,
                    Invitation.accepted_at.is_(None),
                    Invitation.revoked_at.is_(None),
                    Invitation.expires_at > utcnow(),
                )
                .order_by(Invitation.created_at.desc())
            )
            return list(rows)

    async def revoke_invitation(
        self,
        principal: UserPrincipal,
        access: Access,
        invitation_id: uuid.UUID,
        client: ClientInfo,
    ) -> None:
        async with self._db.transaction() as session:
            result = await session.execute(
                update(Invitation)
                .where(
                    Invitation.id == invitation_id,
                    Invitation.workspace_id == access.workspace.id,
                    Invitation.accepted_at.is_(None),
                    Invitation.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow())
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise NotFound("No such open invitation.", code="invitation_not_found")
            await audit.record(
                session,
                "invitation.revoked",
                AuditAction.INVITATION_REVOKED,
                actor_type="user",
                actor_id=str(principal.user_id),
                workspace_id=access.workspace.id,
                target_type="invitation",
                target_id=str(invitation_id),
                ip=client.ip,
            )

    async def accept(self, user: UserPrincipal, token: str, client: ClientInfo) -> Workspace:
        now = utcnow()
        async with self._db.transaction() as session:
            invitation = await session.scalar(
                select(Invitation).where(Invitation.token_hash == digest(token))
            )
            account = await session.get(User, user.user_id)
            usable = (
                invitation is not None
                and account is not None
                and invitation.accepted_at is None
                and invitation.revoked_at is None
                and invitation.expires_at > now
                and invitation.email in (None, account.email)
            )
            if not usable or invitation is None:
                # Expired, used, revoked, addressed to someone else or unknown: one answer.
                raise NotFound(
                    "This invitation is not valid (expired, used or not for you).",
                    code="invitation_not_found",
                )
            workspace = await session.get(Workspace, invitation.workspace_id)
            if workspace is None or workspace.deleted_at is not None:
                raise NotFound("This invitation is not valid.", code="invitation_not_found")
            if await session.get(Membership, (workspace.id, user.user_id)) is not None:
                raise Conflict("You are already a member.", code="already_member")
            invitation.accepted_at = now
            invitation.accepted_by = user.user_id
            session.add(
                Membership(workspace_id=workspace.id, user_id=user.user_id, role=invitation.role)
            )
            await audit.record(
                session,
                "member.joined",
                AuditAction.MEMBER_JOINED,
                actor_type="user",
                actor_id=str(user.user_id),
                workspace_id=workspace.id,
                target_type="user",
                target_id=str(user.user_id),
                ip=client.ip,
                details={"role": invitation.role, "invitation_id": str(invitation.id)},
            )
        return workspace


def _clean_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not 1 <= len(cleaned) <= 80:
        raise Problem("A workspace name is 1 to 80 characters.", code="invalid_name")
    return cleaned


# Built once, on the tables: every WebSocket connect runs it (as messaging's
# `member_conversations`).
_memberships, _workspaces = Membership.__table__, Workspace.__table__
_MEMBER_WORKSPACES = (
    select(_memberships.c.workspace_id)
    .select_from(_memberships.join(_workspaces, _workspaces.c.id == _memberships.c.workspace_id))
    .where(_memberships.c.user_id == bindparam("user_id"), _workspaces.c.deleted_at.is_(None))
)


async def member_workspace_ids(session: AsyncSession, user_id: uuid.UUID) -> frozenset[uuid.UUID]:
    """The live workspaces `user_id` is a member of, in the caller's read (what `list_for`
    lists for a user, without loading the rows)."""
    rows = await session.scalars(_MEMBER_WORKSPACES, {"user_id": user_id})
    return frozenset(rows.all())
