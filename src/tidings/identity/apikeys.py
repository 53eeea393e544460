"""API keys: `tdk_<public id>_<secret>`, shown once, stored as a hash, scoped to a workspace.

Validation is cached per process for `auth_cache_seconds`; revoking publishes an invalidation so
every process stops accepting the key at once. `last_used_at` is written at most once a minute
per key, off the request path.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from tidings.db.base import utcnow
from tidings.db.database import Database
from tidings.http.problems import NotFound, Problem
from tidings.identity import audit
from tidings.identity.accounts import ClientInfo
from tidings.identity.audit import AuditAction
from tidings.identity.cache import AuthCaches
from tidings.identity.models import ApiKey
from tidings.identity.policy import ApiKeyPrincipal, Scope, UserPrincipal
from tidings.identity.tokens import API_KEY_PREFIX, digest, same_digest
from tidings.infra.logging import get_logger

LAST_USED_RESOLUTION = timedelta(minutes=1)
_log = get_logger(__name__)


@dataclass(frozen=True)
class CachedKey:
    key_id: uuid.UUID
    workspace_id: uuid.UUID
    secret_hash: str
    scopes: frozenset[str]
    expires_at: datetime | None
    revoked: bool


class ApiKeys:
    def __init__(self, db: Database, caches: AuthCaches) -> None:
        self._db = db
        self._caches = caches
        self._last_used_written: dict[uuid.UUID, datetime] = {}
        self._pending_touches: set[asyncio.Task[None]] = set()

    async def create(
        self,
        user: UserPrincipal,
        workspace_id: uuid.UUID,
        *,
        name: str,
        scopes: list[str],
        expires_at: datetime | None,
        client: ClientInfo,
    ) -> tuple[ApiKey, str]:
        unknown = set(scopes) - {s.value for s in Scope}
        if not scopes or unknown:
            raise Problem(
                f"Scopes must be a non-empty subset of {sorted(s.value for s in Scope)}.",
                code="invalid_scopes",
            )
        if expires_at is not None and expires_at <= utcnow():
            raise Problem("The expiry must be in the future.", code="invalid_expiry")
        public_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        async with self._db.transaction() as session:
            key = ApiKey(
                workspace_id=workspace_id,
                name=name.strip(),
                public_id=public_id,
                secret_hash=digest(secret),
                scopes=sorted(set(scopes)),
                created_by=user.user_id,
                expires_at=expires_at,
            )
            session.add(key)
            await session.flush()
            await audit.record(
                session,
                "api_key.created",
                AuditAction.API_KEY_CREATED,
                actor_type="user",
                actor_id=str(user.user_id),
                workspace_id=workspace_id,
                target_type="api_key",
                target_id=str(key.id),
                ip=client.ip,
                details={"name": key.name, "scopes": key.scopes},
            )
        return key, f"{API_KEY_PREFIX}{public_id}_{secret}"

    async def list_for_workspace(self, workspace_id: uuid.UUID) -> list[ApiKey]:
        async with self._db.read() as session:
            rows = await session.scalars(
                select(ApiKey)
                .where(ApiKey.workspace_id == workspace_id)
                .order_by(ApiKey.created_at.desc())
            )
            return list(rows)

    async def revoke(
        self, user: UserPrincipal, workspace_id: uuid.UUID, key_id: uuid.UUID, client: ClientInfo
    ) -> None:
        async with self._db.transaction() as session:
            key = await session.scalar(
                select(ApiKey).where(ApiKey.id == key_id, ApiKey.workspace_id == workspace_id)
            )
            if key is None:
                raise NotFound("No such API key.", code="api_key_not_found")
            if key.revoked_at is not None:
                return
            key.revoked_at = utcnow()
            public_id = key.public_id
            await audit.record(
                session,
                "api_key.revoked",
                AuditAction.API_KEY_REVOKED,
                actor_type="user",
                actor_id=str(user.user_id),
                workspace_id=workspace_id,
                target_type="api_key",
                target_id=str(key_id),
                ip=client.ip,
                details={"name": key.name},
            )
        await self._caches.invalidate(f"api_key:{public_id}")

    async def authenticate(self, presented: str) -> ApiKeyPrincipal | None:
        """The principal of a valid key; None for anything else (malformed, wrong, revoked)."""
        if not presented.startswith(API_KEY_PREFIX):
            return None
        public_id, _, secret = presented[len(API_KEY_PREFIX) :].partition("_")
        if not public_id or not secret or len(public_id) > 24:
            return None
        cache_key = f"api_key:{public_id}"
        cached = self._caches.api_keys.get(cache_key)
        if not isinstance(cached, CachedKey):
            cached = await self._load(public_id)
            if cached is None:
                return None
            self._caches.api_keys.put(cache_key, cached)
        if not same_digest(secret, cached.secret_hash) or cached.revoked:
            return None
        now = utcnow()
        if cached.expires_at is not None and cached.expires_at <= now:
            return None
        self._touch(cached.key_id, now)
        return ApiKeyPrincipal(
            key_id=cached.key_id, workspace_id=cached.workspace_id, scopes=cached.scopes
        )

    async def _load(self, public_id: str) -> CachedKey | None:
        async with self._db.read() as session:
            key = await session.scalar(select(ApiKey).where(ApiKey.public_id == public_id))
        if key is None:
            return None
        return CachedKey(
            key_id=key.id,
            workspace_id=key.workspace_id,
            secret_hash=key.secret_hash,
            scopes=frozenset(key.scopes),
            expires_at=key.expires_at,
            revoked=key.revoked_at is not None,
        )

    def _touch(self, key_id: uuid.UUID, now: datetime) -> None:
        written = self._last_used_written.get(key_id)
        if written is not None and now - written < LAST_USED_RESOLUTION:
            return
        self._last_used_written[key_id] = now
        task = asyncio.create_task(self._write_last_used(key_id, now))
        self._pending_touches.add(task)
        task.add_done_callback(self._pending_touches.discard)

    async def _write_last_used(self, key_id: uuid.UUID, now: datetime) -> None:
        try:
            async with self._db.transaction() as session:
                await session.execute(
                    update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now)
                )
        except Exception:
            _log.warning("api_key_last_used_write_failed", key_id=str(key_id), exc_info=True)

    async def drain(self) -> None:
        """Wait for pending last-used writes (shutdown)."""
        if self._pending_touches:
            await asyncio.gather(*self._pending_touches, return_exceptions=True)
