"""Configuration: every knob is a ``TIDINGS_*`` environment variable (or a line in ``.env``).

The profile is derived from the URLs, never set by hand: a SQLite database means the embedded
profile (one process, everything in-process); PostgreSQL means the scaled profile, which also
needs Redis for the backplane, job transport, event stream and shared rate limits.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import secrets
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

ENV_PREFIX = "TIDINGS_"
SECRETS_FILE_NAME = "secrets.json"
MIN_JWT_SECRET_BYTES = 32
# Values that appear in tutorials and example files; refused outside the embedded profile.
KNOWN_WEAK_SECRETS = frozenset(
    {"changeme", "change-me", "secret", "password", "default", "test", "development", "tidings"}
)


class Profile(StrEnum):
    EMBEDDED = "embedded"
    SCALED = "scaled"


class SettingsError(Exception):
    """A setting is missing or invalid; the message names the variable and is safe to print."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    data_dir: Path = Path("data")
    # Connection URLs can carry passwords: kept out of repr, shown masked by `safe_summary`.
    database_url: str | None = Field(default=None, repr=False)
    redis_url: str | None = Field(default=None, repr=False)
    database_pool_size: int = Field(default=10, ge=1, le=200)
    # Every Redis key and channel starts with this, so deployments can share one Redis.
    redis_prefix: str = Field(default="tidings:", min_length=1, max_length=64)
    # Modules imported at start; each may define `setup(runtime)` to add jobs and consumers.
    plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "console"] = "json"

    jwt_secret: SecretStr | None = None
    # Old signing keys still accepted for verification while tokens signed with them live.
    jwt_previous_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    jwt_issuer: str = "tidings"
    master_key: SecretStr | None = None

    access_token_minutes: int = Field(default=15, ge=1, le=60)
    refresh_token_idle_days: float = Field(default=7, gt=0, le=90)
    session_max_days: float = Field(default=30, gt=0, le=365)
    # The first account of a fresh install can always register (and becomes instance admin).
    open_registration: bool = True
    # argon2id cost; the floor is OWASP's minimum (m=19 MiB, t=2, p=1).
    argon2_time_cost: int = Field(default=3, ge=2, le=20)
    argon2_memory_kib: int = Field(default=65_536, ge=19_456, le=1_048_576)
    argon2_parallelism: int = Field(default=4, ge=1, le=16)
    # How long a validated API key or session is trusted without asking the database again;
    # revocations are also pushed to every process over the backplane at once.
    auth_cache_seconds: float = Field(default=1.0, gt=0, le=60)

    rate_limit_ip: str = "600/minute"
    rate_limit_user: str = "600/minute"
    rate_limit_api_key: str = "1200/minute"
    rate_limit_login: str = "10/minute"
    rate_limit_register: str = "10/hour"
    rate_limit_refresh: str = "60/minute"

    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_auto_provision: bool = False

    worker_concurrency: int = Field(default=64, ge=1, le=10_000)
    job_lease_seconds: float = Field(default=60.0, gt=0)
    job_max_attempts: int = Field(default=5, ge=1, le=100)
    job_backoff_base_seconds: float = Field(default=1.0, gt=0)
    job_backoff_max_seconds: float = Field(default=3600.0, gt=0)
    job_sweep_interval_seconds: float = Field(default=1.0, gt=0)
    job_republish_after_seconds: float = Field(default=60.0, gt=0)
    job_retention_hours: float = Field(default=24.0, gt=0)
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    # None = the profile decides: embedded serves run the worker in-process, scaled ones do not.
    serve_runs_worker: bool | None = None

    outbox_batch_size: int = Field(default=500, ge=1, le=10_000)
    outbox_poll_interval_seconds: float = Field(default=0.5, gt=0)
    outbox_lease_seconds: float = Field(default=10.0, gt=0)
    event_stream_maxlen: int = Field(default=100_000, ge=100)

    node_heartbeat_seconds: float = Field(default=2.0, gt=0)

    # Chat sends that arrive together are written in one transaction (group commit), at most
    # this many; 1 writes each in its own transaction.
    message_send_batch_size: int = Field(default=64, ge=1, le=1000)

    # Realtime gateway (WebSocket and SSE).
    ws_heartbeat_seconds: float = Field(default=25.0, gt=0, le=300)
    # A peer silent this long (no frame, no pong) is dead: closed, its presence cleared.
    ws_idle_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Bytes queued for one slow client: at half, typing and presence are dropped; beyond it,
    # the client is disconnected (close code 1008, reason "slow consumer").
    ws_send_buffer_bytes: int = Field(default=1_048_576, ge=16_384)
    # The kernel's send buffer per socket: bounded, so a client that stops reading backs up
    # into the gateway's own buffer (above) instead of megabytes of autotuned kernel memory.
    ws_socket_send_buffer_bytes: int = Field(default=262_144, ge=4096)
    ws_max_message_bytes: int = Field(default=65_536, ge=1024, le=16_777_216)
    ws_rate_limit: str = "30/second"
    typing_ttl_seconds: float = Field(default=5.0, gt=0, le=60)
    # Reconnecting with a position replays at most this many missed events per stream, no
    # older than this; beyond either the client is told `resync_required`.
    resume_max_events: int = Field(default=300, ge=1, le=10_000)
    resume_max_age_seconds: float = Field(default=300.0, gt=0)

    # Outbound HTTP/SMTP to user-supplied addresses (connectors, webhooks). Private, loopback,
    # link-local and other non-public targets are refused unless a network listed here (CIDR,
    # comma-separated) contains them.
    outbound_allow_networks: Annotated[list[str], NoDecode] = Field(default_factory=list)
    outbound_timeout_seconds: float = Field(default=15.0, gt=0, le=300)
    outbound_max_response_bytes: int = Field(default=1_048_576, ge=1024)
    # Send API deliveries.
    delivery_max_attempts: int = Field(default=6, ge=1, le=50)
    delivery_backoff_base_seconds: float = Field(default=2.0, gt=0)
    delivery_backoff_max_seconds: float = Field(default=900.0, gt=0)
    # A connector that fails this many deliveries in a row (retriable errors) is skipped for
    # `delivery_circuit_open_seconds`; a route moves on to its next connector meanwhile.
    delivery_circuit_failure_threshold: int = Field(default=5, ge=1, le=1000)
    delivery_circuit_open_seconds: float = Field(default=30.0, gt=0)
    # The address providers reach this server at (behind a proxy, as configured there): status
    # callback signatures (Twilio's) are computed over it. Unset: the request's own URL.
    public_url: str | None = None
    idempotency_ttl_hours: float = Field(default=24.0, gt=0, le=24 * 30)

    @field_validator(
        "cors_origins", "plugins", "jwt_previous_secrets", "outbound_allow_networks", mode="before"
    )
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator(
        "rate_limit_ip",
        "rate_limit_user",
        "rate_limit_api_key",
        "rate_limit_login",
        "rate_limit_register",
        "rate_limit_refresh",
        "ws_rate_limit",
    )
    @classmethod
    def _check_rate(cls, value: str) -> str:
        from tidings.infra.ratelimit import Rate

        Rate.parse(value)
        return value

    @field_validator("outbound_allow_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"{network!r} is not a network (use CIDR, e.g. 10.0.0.0/8)"
                ) from None
        return value

    @field_validator("database_url", "redis_url", "oidc_issuer", "oidc_audience", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            url = make_url(value)
        except ArgumentError:
            raise ValueError("not a database URL") from None
        if url.drivername not in {"sqlite+aiosqlite", "postgresql+asyncpg"}:
            raise ValueError(
                f"unsupported driver {url.drivername!r}; "
                "use sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _check_profile(self) -> Settings:
        if self.profile is Profile.SCALED:
            if self.redis_url is None:
                raise ValueError(
                    "TIDINGS_REDIS_URL is required when TIDINGS_DATABASE_URL is PostgreSQL "
                    "(the scaled profile)"
                )
            _require_strong_secrets(self)
        if self.jwt_secret is not None:
            _check_jwt_secret(self.jwt_secret, strict=self.profile is Profile.SCALED)
        if self.master_key is not None:
            decode_master_key(self.master_key)
        if (self.oidc_issuer is None) != (self.oidc_audience is None):
            raise ValueError("TIDINGS_OIDC_ISSUER and TIDINGS_OIDC_AUDIENCE go together")
        return self

    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'tidings.db').resolve()}"

    @property
    def profile(self) -> Profile:
        if self.database_url is not None and self.database_url.startswith("postgresql"):
            return Profile.SCALED
        return Profile.EMBEDDED

    @property
    def runs_worker_in_serve(self) -> bool:
        if self.serve_runs_worker is not None:
            return self.serve_runs_worker
        return self.profile is Profile.EMBEDDED

    def safe_summary(self) -> dict[str, Any]:
        """What `tidings check` prints and start-up logs: URLs masked, secrets reduced to 'set'."""
        return {
            "profile": self.profile.value,
            "data_dir": str(self.data_dir),
            "database": mask_url(self.effective_database_url),
            "redis": mask_url(self.redis_url) if self.redis_url else None,
            "listen": f"{self.host}:{self.port}",
            "jwt_secret": "set" if self.jwt_secret else "generated in data dir",
            "master_key": "set" if self.master_key else "generated in data dir",
            "worker_in_serve": self.runs_worker_in_serve,
        }


def mask_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def decode_master_key(value: SecretStr) -> bytes:
    raw = value.get_secret_value().strip()
    try:
        key = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("TIDINGS_MASTER_KEY must be 32 random bytes, base64url-encoded") from None
    if len(key) != 32:
        raise ValueError("TIDINGS_MASTER_KEY must be 32 random bytes, base64url-encoded")
    if len(set(key)) < 16:
        raise ValueError("TIDINGS_MASTER_KEY is not random enough")
    return key


def _check_jwt_secret(value: SecretStr, *, strict: bool) -> None:
    secret = value.get_secret_value()
    if not strict:
        return
    if secret.lower() in KNOWN_WEAK_SECRETS or len(set(secret)) < 10:
        raise ValueError("TIDINGS_JWT_SECRET is a default or weak value; generate a random one")
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise ValueError(f"TIDINGS_JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes")


def _require_strong_secrets(settings: Settings) -> None:
    if settings.jwt_secret is None:
        raise ValueError("TIDINGS_JWT_SECRET is required in the scaled profile")
    if settings.master_key is None:
        raise ValueError("TIDINGS_MASTER_KEY is required in the scaled profile")


def ensure_embedded_secrets(settings: Settings) -> Settings:
    """Fill missing secrets in the embedded profile from ``<data_dir>/secrets.json``.

    The file is created once with mode 0600; later starts reuse it, so tokens and encrypted
    credentials survive restarts.
    """
    if settings.jwt_secret is not None and settings.master_key is not None:
        return settings
    if settings.profile is not Profile.EMBEDDED:
        raise SettingsError("TIDINGS_JWT_SECRET and TIDINGS_MASTER_KEY are required")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / SECRETS_FILE_NAME
    stored = _read_or_create_secrets(path)
    updates: dict[str, Any] = {}
    if settings.jwt_secret is None:
        updates["jwt_secret"] = SecretStr(stored["jwt_secret"])
    if settings.master_key is None:
        updates["master_key"] = SecretStr(stored["master_key"])
    return settings.model_copy(update=updates)


def _read_or_create_secrets(path: Path) -> dict[str, str]:
    generated = {
        "jwt_secret": secrets.token_urlsafe(48),
        "master_key": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("="),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        data: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        return data
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(generated, handle)
    return generated


def load_settings(**overrides: Any) -> Settings:
    """Read and validate settings; raise SettingsError with one printable line on bad input."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe_validation_error(exc)) from None
    return ensure_embedded_secrets(settings)


def _describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    location = [str(part) for part in first["loc"]]
    message = str(first["msg"]).removeprefix("Value error, ")
    if location:
        return f"invalid setting {ENV_PREFIX}{location[0].upper()}: {message}"
    return f"invalid settings: {message}"
