"""The identity component of one process: its services and the engines they share."""

from __future__ import annotations

from datetime import timedelta

import httpx
import redis.asyncio as aioredis

from tidings.audit.service import AuditLog
from tidings.db.database import Database
from tidings.identity.accounts import Accounts
from tidings.identity.apikeys import ApiKeys
from tidings.identity.cache import AuthCaches
from tidings.identity.oidc import OIDCVerifier
from tidings.identity.passwords import PasswordHashing
from tidings.identity.tokens import AccessTokens
from tidings.identity.workspaces import Workspaces
from tidings.infra.backplane import Backplane
from tidings.infra.ratelimit import InProcessRateLimiter, Rate, RateLimiter, RedisRateLimiter
from tidings.settings import Settings


class RateLimits:
    def __init__(self, settings: Settings) -> None:
        self.ip = Rate.parse(settings.rate_limit_ip)
        self.user = Rate.parse(settings.rate_limit_user)
        self.api_key = Rate.parse(settings.rate_limit_api_key)
        self.login = Rate.parse(settings.rate_limit_login)
        self.register = Rate.parse(settings.rate_limit_register)
        self.refresh = Rate.parse(settings.rate_limit_refresh)


class Identity:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        backplane: Backplane,
        redis: aioredis.Redis | None,
    ) -> None:
        assert settings.jwt_secret is not None  # noqa: S101 - load_settings fills it
        self.settings = settings
        self.caches = AuthCaches(backplane, settings.auth_cache_seconds)
        self.hashing = PasswordHashing(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
        )
        self.tokens = AccessTokens(
            secret=settings.jwt_secret,
            previous=settings.jwt_previous_secrets,
            issuer=settings.jwt_issuer,
            lifetime=timedelta(minutes=settings.access_token_minutes),
        )
        self.accounts = Accounts(
            db,
            hashing=self.hashing,
            tokens=self.tokens,
            caches=self.caches,
            refresh_idle=timedelta(days=settings.refresh_token_idle_days),
            session_lifetime=timedelta(days=settings.session_max_days),
            open_registration=settings.open_registration,
        )
        self.workspaces = Workspaces(db)
        self.api_keys = ApiKeys(db, self.caches)
        self.audit = AuditLog(db)
        self.limits = RateLimits(settings)
        self.limiter: RateLimiter = (
            RedisRateLimiter(redis, prefix=f"{settings.redis_prefix}rl:")
            if redis is not None
            else InProcessRateLimiter()
        )
        self._http: httpx.AsyncClient | None = None
        self.oidc: OIDCVerifier | None = None
        if settings.oidc_issuer and settings.oidc_audience:
            self._http = httpx.AsyncClient(follow_redirects=False)
            self.oidc = OIDCVerifier(
                issuer=settings.oidc_issuer,
                audience=settings.oidc_audience,
                jwks_url=settings.oidc_jwks_url,
                http=self._http,
            )

    async def start(self) -> None:
        await self.caches.start()

    async def stop(self) -> None:
        await self.api_keys.drain()
        if self._http is not None:
            await self._http.aclose()
