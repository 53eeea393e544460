"""The two deployment profiles, set up the way tests/conftest.py sets them up.

* embedded: a fresh SQLite file (copied from a migrated template) in a temporary directory,
  in-process job transport and backplane;
* scaled: the PostgreSQL database ``tidings_bench`` (dropped, created and migrated once per
  invocation, truncated before every measured run) and Redis with a key prefix unique to the
  run. Everything is dropped or deleted again at the end.
"""

from __future__ import annotations

import itertools
import os
import secrets
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from tidings.db import migrate
from tidings.settings import Settings

PROFILES = ("embedded", "scaled")
PROFILE_LABELS = {"embedded": "SQLite, in-process", "scaled": "PostgreSQL + Redis"}
POSTGRES_ADMIN_DSN = os.environ.get(
    "TIDINGS_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TIDINGS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
BENCH_DATABASE = "tidings_bench"


@dataclass(frozen=True)
class Deployment:
    """One fresh, isolated set of stores for one measured run."""

    profile: str
    database_url: str
    redis_url: str | None
    redis_prefix: str
    data_dir: Path

    def settings(self, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": self.data_dir,
            "database_url": self.database_url,
            "jwt_secret": secrets.token_urlsafe(48),
            "master_key": secrets.token_urlsafe(32),
            "log_level": "warning",
            **overrides,
        }
        if self.redis_url is not None:
            values["redis_url"] = self.redis_url
            values["redis_prefix"] = self.redis_prefix
        return Settings(_env_file=None, **values)


class Stores:
    """Owns the temporary directory, the SQLite template, the bench database and Redis keys."""

    def __init__(self, run_tag: str) -> None:
        self.run_tag = run_tag
        self.redis_url = REDIS_URL
        self._tmp = Path(tempfile.mkdtemp(prefix=f"tidings-bench-{run_tag}-"))
        self._template: Path | None = None
        self._postgres_url: str | None = None
        self._counter = itertools.count(1)
        self._redis_used = False

    def redis_url_for_peers(self) -> str:
        self._redis_used = True
        return self.redis_url

    @property
    def key_pattern(self) -> str:
        """Every Redis key this run creates (Tidings, SAQ and arq) contains the run tag."""
        return f"*{self.run_tag}*"

    async def prepare(self, profiles: list[str]) -> None:
        if "embedded" in profiles:
            template = self._tmp / "template.db"
            await migrate.upgrade_async(f"sqlite+aiosqlite:///{template}")
            self._template = template
        if "scaled" in profiles:
            await _recreate_database(BENCH_DATABASE)
            admin = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
            url = f"{admin.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{BENCH_DATABASE}"
            await migrate.upgrade_async(url)
            self._postgres_url = url

    async def fresh(self, profile: str) -> Deployment:
        n = next(self._counter)
        data_dir = self._tmp / f"run-{n}"
        data_dir.mkdir()
        prefix = f"bench:{self.run_tag}:{n}:"
        if profile == "embedded":
            assert self._template is not None, "prepare(['embedded']) first"
            path = data_dir / "tidings.db"
            shutil.copyfile(self._template, path)
            return Deployment(profile, f"sqlite+aiosqlite:///{path}", None, prefix, data_dir)
        assert self._postgres_url is not None, "prepare(['scaled']) first"
        await _truncate_all(self._postgres_url)
        self._redis_used = True
        return Deployment(profile, self._postgres_url, self.redis_url, prefix, data_dir)

    async def cleanup(self) -> None:
        """Delete this run's Redis keys, drop the bench database and the temporary files."""
        if self._redis_used:
            client = aioredis.from_url(self.redis_url)  # type: ignore[no-untyped-call]
            try:
                keys = [key async for key in client.scan_iter(match=self.key_pattern, count=1000)]
                for start in range(0, len(keys), 1000):
                    await client.delete(*keys[start : start + 1000])
            finally:
                await client.aclose()
        if self._postgres_url is not None:
            await _drop_database(BENCH_DATABASE)
        shutil.rmtree(self._tmp, ignore_errors=True)


def new_run_tag() -> str:
    return uuid.uuid4().hex[:10]


async def _recreate_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _truncate_all(url: str) -> None:
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables "
            "WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        names = ", ".join(f'"{row["tablename"]}"' for row in tables)
        if names:
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
        # Fresh statistics, so the planner does not keep plans from the previous run's sizes.
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
