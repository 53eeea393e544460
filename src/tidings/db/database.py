"""Engines and transactions for SQLite (embedded) and PostgreSQL (scaled).

Every state change goes through `Database.transaction()`: one transaction that writes the state
and its event rows, then — only after COMMIT has returned — runs the after-commit callbacks that
wake the outbox dispatcher and hand queued jobs to the transport. A rollback runs none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from tidings.infra.logging import get_logger

AfterCommit = Callable[[], Awaitable[None] | None]
_AFTER_COMMIT_KEY = "tidings.after_commit"
_HOOKS_KEY = "tidings.hooks"


@dataclass
class CommitHooks:
    """Wake-ups wired by the runtime; services reach them through `hooks_of(session)`."""

    events_committed: Callable[[], None] | None = None
    jobs_committed: Callable[[list[uuid.UUID]], Awaitable[None]] | None = None


def hooks_of(session: AsyncSession) -> CommitHooks:
    hooks: CommitHooks = session.info.get(_HOOKS_KEY) or CommitHooks()
    return hooks


_log = get_logger(__name__)


def after_commit(session: AsyncSession, callback: AfterCommit, *, key: str | None = None) -> None:
    """Run `callback` once the surrounding `Database.transaction()` has committed.

    With a `key`, a callback is registered once per transaction (e.g. one outbox wake-up however
    many events the transaction wrote).
    """
    callbacks: dict[object, AfterCommit] = session.info.setdefault(_AFTER_COMMIT_KEY, {})
    callbacks[key if key is not None else object()] = callback


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url: URL = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            # One writer connection plus an in-process lock: SQLite allows one writer at a time,
            # and queueing writers here avoids SQLITE_BUSY back-off sleeps. Readers use WAL.
            self.write_engine = _sqlite_engine(self.url, pool_size=1, immediate=True, echo=echo)
            self.read_engine = _sqlite_engine(
                self.url, pool_size=pool_size, immediate=False, echo=echo
            )
            self._write_lock: asyncio.Lock | None = asyncio.Lock()
        else:
            self.write_engine = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                echo=echo,
            )
            self.read_engine = self.write_engine
            self._write_lock = None
        self._writer = async_sessionmaker(self.write_engine, expire_on_commit=False)
        self._reader = async_sessionmaker(self.read_engine, expire_on_commit=False)
        self.hooks = CommitHooks()

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A read-write transaction; commits on success, rolls back on error."""
        lock: contextlib.AbstractAsyncContextManager[Any] = (
            self._write_lock if self._write_lock is not None else contextlib.nullcontext()
        )
        session = self._writer(info={_HOOKS_KEY: self.hooks})
        committed = False
        try:
            async with lock:
                yield session
                await session.commit()
                committed = True
        finally:
            await session.close()
        if committed:
            await _run_after_commit(session)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session (on SQLite it never takes the write lock)."""
        async with self._reader() as session:
            yield session

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


async def _run_after_commit(session: AsyncSession) -> None:
    callbacks: dict[object, AfterCommit] = session.info.pop(_AFTER_COMMIT_KEY, {})
    for callback in callbacks.values():
        try:
            result = callback()
            if result is not None:
                await result
        except Exception:
            # The state is committed; a lost wake-up is recovered by the sweeper and poller.
            _log.exception("after_commit_callback_failed")


def _sqlite_engine(url: URL, *, pool_size: int, immediate: bool, echo: bool) -> AsyncEngine:
    engine = create_async_engine(url, pool_size=pool_size, max_overflow=0, echo=echo)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy (not the sqlite3 module) decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    begin_statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin_statement)

    return engine
