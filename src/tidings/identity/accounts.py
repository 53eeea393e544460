"""Accounts and sessions: register, log in, refresh with rotation, log out, change password.

Refresh tokens are opaque, stored as SHA-256, and rotated on every use by one compare-and-set
UPDATE. Presenting a token that was already rotated away is a theft signal: the whole session
(token family) is revoked and TOKEN_REUSE_DETECTED is audited — except within a few seconds of
the rotation, where it is the client's own parallel request and simply loses.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.http.problems import Conflict, Forbidden, NotFound, Problem, Unauthenticated
from tidings.identity import audit
from tidings.identity.audit import AuditAction
from tidings.identity.cache import AuthCaches
from tidings.identity.limits import MAX_PASSWORD_LENGTH, MIN_PASSWORD_LENGTH
from tidings.identity.models import ExternalAccount, RefreshToken, Session, User
from tidings.identity.oidc import ExternalIdentity
from tidings.identity.passwords import PasswordHashing
from tidings.identity.tokens import (
    REFRESH_TOKEN_PREFIX,
    AccessClaims,
    AccessTokens,
    digest,
    new_secret,
)

# A rotated token presented again this soon is the same client racing itself, not a thief.
REUSE_GRACE = timedelta(seconds=10)


@dataclass(frozen=True)
class ClientInfo:
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    access_expires_at: datetime
    refresh_token: str
    refresh_expires_at: datetime
    session_id: uuid.UUID
    user_id: uuid.UUID


def normalize_email(raw: str) -> str:
    email = raw.strip().lower()
    try:
        validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise Problem(str(exc), code="invalid_email") from None
    return email


def check_password_strength(password: str, email: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise Problem(
            f"Passwords are {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters long.",
            code="weak_password",
        )
    if password.lower() in {email, email.split("@")[0]} or len(set(password)) < 4:
        raise Problem("Choose a less guessable password.", code="weak_password")


class Accounts:
    def __init__(
        self,
        db: Database,
        *,
        hashing: PasswordHashing,
        tokens: AccessTokens,
        caches: AuthCaches,
        refresh_idle: timedelta,
        session_lifetime: timedelta,
        open_registration: bool,
    ) -> None:
        self._db = db
        self._hashing = hashing
        self._tokens = tokens
        self._caches = caches
        self._refresh_idle = refresh_idle
        self._session_lifetime = session_lifetime
        self._open_registration = open_registration

    # -- registration and login -------------------------------------------------------------

    async def register(
        self, *, email: str, password: str, display_name: str, client: ClientInfo
    ) -> tuple[User, TokenPair]:
        email = normalize_email(email)
        check_password_strength(password, email)
        password_hash = await self._hashing.hash(password)
        async with self._db.transaction() as session:
            first_account = not await session.scalar(select(func.count()).select_from(User))
            if not first_account and not self._open_registration:
                raise Forbidden(
                    "Registration is closed; ask for an invitation.", code="registration_closed"
                )
            if await session.scalar(select(User.id).where(User.email == email)):
                raise Conflict("An account with this email exists.", code="email_taken")
            user = User(
                email=email,
                display_name=display_name.strip(),
                password_hash=password_hash,
                is_instance_admin=first_account,
                password_changed_at=utcnow(),
            )
            session.add(user)
            await session.flush()
            await audit.record(
                session,
                "user.registered",
                AuditAction.USER_REGISTERED,
                actor_type="user",
                actor_id=str(user.id),
                target_type="user",
                target_id=str(user.id),
                ip=client.ip,
                details={"instance_admin": first_account},
                stream_key=f"user:{user.id}",
            )
            pair = await self._open_session(session, user.id, client)
        return user, pair

    async def login(self, *, email: str, password: str, client: ClientInfo) -> TokenPair:
        email = email.strip().lower()
        async with self._db.read() as session:
            user = await session.scalar(select(User).where(User.email == email))
        # Unknown emails verify against a dummy hash: same time, same answer.
        verification = await self._hashing.verify(
            user.password_hash if user is not None else None, password
        )
        if user is None or not verification.ok or not user.is_active:
            async with self._db.transaction() as session:
                await audit.record(
                    session,
                    "user.login_failed",
                    AuditAction.LOGIN_FAILED,
                    actor_type="anonymous",
                    actor_id=str(user.id) if user else None,
                    target_type="user",
                    target_id=str(user.id) if user else None,
                    ip=client.ip,
                    details={
                        "reason": "bad_credentials"
                        if user is None or not verification.ok
                        else "inactive"
                    },
                    stream_key=f"user:{user.id}" if user else "identity:login-failures",
                )
            raise Unauthenticated("Email or password is wrong.", code="invalid_credentials")
        new_hash = await self._hashing.hash(password) if verification.needs_rehash else None
        async with self._db.transaction() as session:
            if new_hash is not None:
                await session.execute(
                    update(User).where(User.id == user.id).values(password_hash=new_hash)
                )
            await audit.record(
                session,
                "user.logged_in",
                AuditAction.LOGIN_SUCCEEDED,
                actor_type="user",
                actor_id=str(user.id),
                target_type="user",
                target_id=str(user.id),
                ip=client.ip,
                stream_key=f"user:{user.id}",
            )
            return await self._open_session(session, user.id, client)

    async def login_external(
        self, identity: ExternalIdentity, *, auto_provision: bool, client: ClientInfo
    ) -> User:
        """Map an external identity to its account, creating one when allowed."""
        async with self._db.read() as session:
            user = await session.scalar(
                select(User)
                .join(ExternalAccount, ExternalAccount.user_id == User.id)
                .where(
                    ExternalAccount.issuer == identity.issuer,
                    ExternalAccount.subject == identity.subject,
                )
            )
        if user is not None:
            if not user.is_active:
                raise Unauthenticated("This account is disabled.", code="account_disabled")
            return user
        if not auto_provision or not identity.email or not identity.email_verified:
            raise Unauthenticated(
                "This external account is not linked to a Tidings account.",
                code="external_account_unknown",
            )
        email = normalize_email(identity.email)
        async with self._db.transaction() as session:
            user = await session.scalar(select(User).where(User.email == email))
            if user is None:
                user = User(
                    email=email,
                    display_name=(identity.name or email.split("@")[0])[:100],
                    password_hash=None,
                )
                session.add(user)
                await session.flush()
                await audit.record(
                    session,
                    "user.registered",
                    AuditAction.USER_REGISTERED,
                    actor_type="user",
                    actor_id=str(user.id),
                    target_type="user",
                    target_id=str(user.id),
                    ip=client.ip,
                    details={"issuer": identity.issuer},
                    stream_key=f"user:{user.id}",
                )
            session.add(
                ExternalAccount(user_id=user.id, issuer=identity.issuer, subject=identity.subject)
            )
        return user

    # -- refresh, logout, sessions ----------------------------------------------------------

    async def refresh(self, refresh_token: str, client: ClientInfo) -> TokenPair:
        now = utcnow()
        token_hash = digest(refresh_token)
        live_sessions = select(Session.id).where(
            Session.revoked_at.is_(None), Session.expires_at > now
        )
        async with self._db.transaction() as session:
            rotated = (
                await session.execute(
                    update(RefreshToken)
                    .where(
                        RefreshToken.token_hash == token_hash,
                        RefreshToken.used_at.is_(None),
                        RefreshToken.expires_at > now,
                        RefreshToken.session_id.in_(live_sessions),
                    )
                    .values(used_at=now)
                    .returning(RefreshToken.session_id)
                    .execution_options(synchronize_session=False)
                )
            ).first()
            if rotated is not None:
                owner = await session.get(Session, rotated.session_id)
                assert owner is not None  # noqa: S101 - FK guarantees it
                owner.last_used_at = now
                if client.user_agent:
                    owner.user_agent = client.user_agent[:300]
                return await self._issue_pair(session, owner.user_id, owner.id)
        raise await self._refusal(token_hash, now, client)

    async def _refusal(self, token_hash: str, now: datetime, client: ClientInfo) -> Unauthenticated:
        """Why a refresh failed; a token rotated away long ago also ends its whole family."""
        async with self._db.transaction() as session:
            known = await session.scalar(
                select(RefreshToken).where(RefreshToken.token_hash == token_hash)
            )
            if known is None or known.used_at is None:
                raise Unauthenticated(
                    "The refresh token is not valid.", code="invalid_refresh_token"
                )
            if now - known.used_at <= REUSE_GRACE:
                raise Unauthenticated(
                    "This refresh token was just used by another request.",
                    code="refresh_token_used",
                )
            family = await session.get(Session, known.session_id)
            if family is not None and family.revoked_at is None:
                family.revoked_at = now
                family.revoked_reason = "token_reuse"
                await audit.record(
                    session,
                    "session.token_reuse_detected",
                    AuditAction.TOKEN_REUSE_DETECTED,
                    actor_type="anonymous",
                    actor_id=None,
                    target_type="session",
                    target_id=str(family.id),
                    ip=client.ip,
                    details={"user_id": str(family.user_id)},
                    stream_key=f"user:{family.user_id}",
                )
                reused_session = family.id
            else:
                reused_session = None
        if reused_session is not None:
            await self._caches.invalidate(f"session:{reused_session}")
        return Unauthenticated(
            "This refresh token was already used; the session has been ended.",
            code="refresh_token_reused",
        )

    async def logout(self, session_id: uuid.UUID, user_id: uuid.UUID, client: ClientInfo) -> None:
        await self.revoke_session(session_id, user_id, client, reason="logout")

    async def revoke_session(
        self,
        session_id: uuid.UUID,
        user_id: uuid.UUID,
        client: ClientInfo,
        *,
        reason: str = "revoked",
    ) -> None:
        async with self._db.transaction() as session:
            result = await session.execute(
                update(Session)
                .where(
                    Session.id == session_id,
                    Session.user_id == user_id,
                    Session.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow(), revoked_reason=reason)
            )
            if not result.rowcount:  # type: ignore[attr-defined]
                raise NotFound("No such active session.", code="session_not_found")
            await audit.record(
                session,
                "session.revoked",
                AuditAction.LOGOUT if reason == "logout" else AuditAction.SESSION_REVOKED,
                actor_type="user",
                actor_id=str(user_id),
                target_type="session",
                target_id=str(session_id),
                ip=client.ip,
                stream_key=f"user:{user_id}",
            )
        await self._caches.invalidate(f"session:{session_id}")

    async def list_sessions(self, user_id: uuid.UUID) -> list[Session]:
        async with self._db.read() as session:
            rows = await session.scalars(
                select(Session)
                .where(
                    Session.user_id == user_id,
                    Session.revoked_at.is_(None),
                    Session.expires_at > utcnow(),
                )
                .order_by(Session.last_used_at.desc())
            )
            return list(rows)

    async def change_password(
        self,
        user_id: uuid.UUID,
        *,
        current_password: str,
        new_password: str,
        client: ClientInfo,
    ) -> TokenPair:
        """Change the password, end every session, and open a fresh one for this client."""
        async with self._db.read() as session:
            user = await session.get(User, user_id)
        if user is None:
            raise Unauthenticated(code="invalid_token")
        if not (await self._hashing.verify(user.password_hash, current_password)).ok:
            raise Forbidden("The current password is wrong.", code="invalid_credentials")
        check_password_strength(new_password, user.email)
        new_hash = await self._hashing.hash(new_password)
        now = utcnow()
        async with self._db.transaction() as session:
            ended = (
                (
                    await session.execute(
                        update(Session)
                        .where(Session.user_id == user_id, Session.revoked_at.is_(None))
                        .values(revoked_at=now, revoked_reason="password_changed")
                        .returning(Session.id)
                        .execution_options(synchronize_session=False)
                    )
                )
                .scalars()
                .all()
            )
            await session.execute(
                update(User)
                .where(User.id == user_id)
                .values(password_hash=new_hash, password_changed_at=now)
            )
            await audit.record(
                session,
                "user.password_changed",
                AuditAction.PASSWORD_CHANGED,
                actor_type="user",
                actor_id=str(user_id),
                target_type="user",
                target_id=str(user_id),
                ip=client.ip,
                details={"sessions_ended": len(ended)},
                stream_key=f"user:{user_id}",
            )
            pair = await self._open_session(session, user_id, client)
        for ended_id in ended:
            await self._caches.invalidate(f"session:{ended_id}")
        return pair

    # -- per-request checks -----------------------------------------------------------------

    async def session_is_live(self, claims: AccessClaims) -> bool:
        key = f"session:{claims.session_id}"
        cached = self._caches.sessions.get(key)
        if cached is not None:
            return cached
        async with self._db.read() as session:
            row = await session.get(Session, claims.session_id)
        live = (
            row is not None
            and row.revoked_at is None
            and row.expires_at > utcnow()
            and row.user_id == claims.user_id
        )
        self._caches.sessions.put(key, live)
        return live

    async def get_user(self, user_id: uuid.UUID) -> User:
        async with self._db.read() as session:
            user = await session.get(User, user_id)
        if user is None or not user.is_active:
            raise Unauthenticated("The account no longer exists.", code="invalid_token")
        return user

    # -- helpers ----------------------------------------------------------------------------

    async def _open_session(
        self, session: AsyncSession, user_id: uuid.UUID, client: ClientInfo
    ) -> TokenPair:
        record = Session(
            user_id=user_id,
            expires_at=utcnow() + self._session_lifetime,
            ip=client.ip,
            user_agent=(client.user_agent or "")[:300] or None,
        )
        session.add(record)
        await session.flush()
        return await self._issue_pair(session, user_id, record.id)

    async def _issue_pair(
        self, session: AsyncSession, user_id: uuid.UUID, session_id: uuid.UUID
    ) -> TokenPair:
        family = await session.get(Session, session_id)
        assert family is not None  # noqa: S101 - just created or just rotated
        refresh = new_secret(REFRESH_TOKEN_PREFIX)
        refresh_expires = min(utcnow() + self._refresh_idle, family.expires_at)
        session.add(
            RefreshToken(
                session_id=session_id, token_hash=digest(refresh), expires_at=refresh_expires
            )
        )
        access, access_expires = self._tokens.issue(user_id, session_id)
        return TokenPair(
            access_token=access,
            access_expires_at=access_expires,
            refresh_token=refresh,
            refresh_expires_at=refresh_expires,
            session_id=session_id,
            user_id=user_id,
        )
