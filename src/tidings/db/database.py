"""Engines and transactions for SQLite (embedded) and PostgreSQL (scaled).

Every state change goes through `Database.transaction()`: one transaction that writes the state
and its event rows, then — only after COMMIT has returned — runs the after-commit callbacks that
wake the outbox dispatcher and hand queued jobs to the transport. A rollback runs none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from tidings.db.sqlite_inline import connect_inline
from tidings.infra.logging import get_logger

AfterCommit = Callable[[], Awaitable[None] | None]
_AFTER_COMMIT_KEY = "tidings.after_commit"
_HOOKS_KEY = "tidings.hooks"
# How long a SQLite connection waits for another process's write lock.
BUSY_TIMEOUT_MS = 10_000


@dataclass
class CommitHooks:
    """Wake-ups wired by the runtime; services reach them through `hooks_of(session)`."""

    events_committed: Callable[[], None] | None = None
    # Embedded (SQLite): a transaction's committed events as stored, in the outbox read's
    # columns, for this process's dispatcher to hand out without reading them back.
    events_stored: Callable[[list[tuple[Any, ...]]], Awaitable[None]] | None = None
    jobs_committed: Callable[[list[uuid.UUID]], Awaitable[None]] | None = None
    # This process's job worker, when it runs one: jobs queued here can start here at once.
    local_worker: LocalWorker | None = None


class LocalWorker(Protocol):
    """What `jobs.enqueue_many` needs of a worker to hand it jobs without the queue."""

    @property
    def node_id(self) -> str: ...

    @property
    def lease_seconds(self) -> float: ...

    def can_adopt(self, count: int) -> bool: ...

    def adopt(self, jobs: list[Any]) -> None: ...


def hooks_of(session: AsyncSession) -> CommitHooks:
    hooks: CommitHooks = session.info.get(_HOOKS_KEY) or CommitHooks()
    return hooks


_log = get_logger(__name__)


async def driver_of(session: AsyncSession) -> Any:
    """The driver's connection (aiosqlite / asyncpg) under the session's transaction: statements
    written per dialect run in that transaction."""
    connection = await session.connection()
    driver = (await connection.get_raw_connection()).driver_connection
    if not _in_transaction(driver):
        # SQLAlchemy's asyncpg adapter sends BEGIN with the first statement it runs: run one,
        # or what follows would commit on its own (SQLite's BEGIN was sent already).
        await connection.exec_driver_sql("SELECT 1")
    return driver


def after_commit(session: AsyncSession, callback: AfterCommit, *, key: str | None = None) -> None:
    """Run `callback` once the surrounding `Database.transaction()` has committed.

    With a `key`, a callback is registered once per transaction (e.g. one outbox wake-up however
    many events the transaction wrote).
    """
    callbacks: dict[object, AfterCommit] = session.info.setdefault(_AFTER_COMMIT_KEY, {})
    callbacks[key if key is not None else object()] = callback


# Two would do (see `Database._begin`); a third covers a restart during the retry.
_BEGIN_ATTEMPTS = 3


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, echo: bool = False) -> None:
        self.url: URL = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            # One writer connection plus an in-process lock: SQLite allows one writer at a time,
            # and queueing writers here avoids SQLITE_BUSY back-off sleeps. Readers use WAL.
            self.write_engine = _sqlite_engine(
                self.url, pool_size=1, immediate=True, echo=echo, inline=True
            )
            self.read_engine = _sqlite_engine(
                self.url, pool_size=pool_size, immediate=False, echo=echo
            )
            self._write_lock: asyncio.Lock | None = asyncio.Lock()
        else:
            self.write_engine = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                # No pre-ping (BEGIN, an empty query and ROLLBACK: three round trips per
                # checkout): each transaction sends its BEGIN at once instead, and a connection
                # the server dropped fails it before anything ran (`_begin`).
                echo=echo,
            )
            self.read_engine = self.write_engine
            self._write_lock = None
        # `driver_connection()`'s own small pool: used only in autocommit, so it needs no reset
        # (rollback) on return; on PostgreSQL no pre-ping either: a dead connection is
        # discarded when a statement on it fails (see `driver_connection`).
        if self.is_sqlite:
            # A second writer connection, serialized with the first by the same write lock.
            self._driver_engine = _sqlite_engine(
                self.url, pool_size=1, immediate=True, echo=echo, reset_on_return=False, inline=True
            )
        else:
            self._driver_engine = create_async_engine(
                self.url,
                # Kept open rather than overflowing: a connection opened and closed per burst
                # costs PostgreSQL a backend start each time. The job runner's claim and
                # completion, the delivery log's start and finish, the outbox read and the
                # job queue's inserts may each hold one at once.
                pool_size=6,
                max_overflow=4,
                pool_reset_on_return=None,
                echo=echo,
                # asyncpg prepares each statement once per connection, and after five runs
                # PostgreSQL keeps a generic plan made with the statistics of that moment. The
                # outbox read and the job claim start on empty tables (a new deployment): that
                # plan is a sequential scan, kept while the table grows (bench.delivery: 560
                # event rows read per delivery) until an ANALYZE. A plan per execution looks at
                # the table as it is; these statements are simple, so planning costs little.
                # No bitmap scans: the outbox's partial index keeps an entry for every row
                # marked since the last VACUUM; a plain index scan flags those dead as it
                # passes (the next one skips them), a bitmap scan reads them all every time
                # (bench.delivery: 718 index entries read per delivery, 8.5 without).
                connect_args={
                    "server_settings": {
                        "plan_cache_mode": "force_custom_plan",
                        "enable_bitmapscan": "off",
                    }
                },
            )
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
        committed = False
        async with lock:
            session = await self._begun(self._writer, info={_HOOKS_KEY: self.hooks})
            try:
                yield session
                await session.commit()
                committed = True
            finally:
                await session.close()
        if committed:
            await _run_after_commit(session)

    @asynccontextmanager
    async def write_connection(self) -> AsyncIterator[AsyncConnection]:
        """A read-write transaction on a Core connection, without an ORM session.

        For hot paths that only run Core statements (the job runner). It commits on success and
        rolls back on error, like `transaction()`, but runs no after-commit callbacks: the caller
        does what must follow the COMMIT once this block has exited.
        """
        lock: contextlib.AbstractAsyncContextManager[Any] = (
            self._write_lock if self._write_lock is not None else contextlib.nullcontext()
        )
        async with lock:
            for attempt in range(1, _BEGIN_ATTEMPTS + 1):
                async with self.write_engine.connect() as conn:
                    if not self.is_sqlite and not await self._begin(
                        conn, last=attempt == _BEGIN_ATTEMPTS
                    ):
                        continue
                    async with conn.begin():
                        yield conn
                    return

    @asynccontextmanager
    async def driver_connection(self) -> AsyncIterator[Any]:
        """The driver's own connection (aiosqlite or asyncpg) from the write pool, write lock held.

        In autocommit: each statement commits on its own. For the few hot paths whose SQL is
        written per dialect (the job runner's enqueue, claim and completion); everything else
        uses `transaction()`. This pool does not pre-ping: when a statement fails because the
        PostgreSQL connection died (a server restart), the pool is replaced, and the caller's
        error handling retries on a fresh connection.
        """
        lock: contextlib.AbstractAsyncContextManager[Any] = (
            self._write_lock if self._write_lock is not None else contextlib.nullcontext()
        )
        async with lock, self._driver_engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            try:
                yield driver
            except BaseException:
                if _in_transaction(driver):
                    # A `driver_transaction` whose ROLLBACK failed: this pool does not reset
                    # connections on return, so the connection must not go back open.
                    raw.invalidate()
                is_closed = getattr(driver, "is_closed", None)  # asyncpg: the server went away
                if is_closed is not None and is_closed():
                    # Its siblings most likely died with it: every connection opened before now
                    # is closed and replaced at its next checkout, as SQLAlchemy itself does on
                    # a disconnect. Not `dispose()`: a sibling checked out meanwhile would be
                    # returned to the orphaned pool and left open for the garbage collector.
                    self._driver_engine.pool._invalidate(raw)
                raise

    @asynccontextmanager
    async def driver_transaction(self) -> AsyncIterator[Any]:
        """One transaction of several statements on `driver_connection()`'s connection.

        For the hot paths written per dialect that must change several tables atomically (the
        delivery log's start and finish with their events). Commits on success, rolls back on
        error; runs no after-commit callbacks (the caller does what must follow the COMMIT).
        """
        async with self.driver_connection() as conn:
            if not self.is_sqlite:
                async with conn.transaction():
                    yield conn
                return
            # Writes only: the write lock is held, so IMMEDIATE never waits on another writer
            # of this process.
            await conn.execute_fetchall("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                await conn.rollback()
                raise
            await conn.commit()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only session (on SQLite it never takes the write lock)."""
        session = await self._begun(self._reader)
        async with session:
            yield session

    async def _begun(self, sessions: async_sessionmaker[AsyncSession], **kw: Any) -> AsyncSession:
        """A new session; on PostgreSQL with its transaction begun (`_begin`)."""
        if self.is_sqlite:
            return sessions(**kw)
        for attempt in range(1, _BEGIN_ATTEMPTS + 1):
            session = sessions(**kw)
            try:
                if await self._begin(await session.connection(), last=attempt == _BEGIN_ATTEMPTS):
                    return session
            except BaseException:
                await session.close()
                raise
            await session.close()
        raise AssertionError("unreachable: the last attempt raises")  # pragma: no cover

    async def _begin(self, connection: AsyncConnection, *, last: bool) -> bool:
        """PostgreSQL: send the transaction's BEGIN now, through SQLAlchemy's asyncpg adapter
        (which otherwise sends it before the first statement, so it still knows the
        transaction and commits or rolls it back). It doubles as the liveness check that
        pre-ping made with three round trips: a connection the server dropped (a restart)
        fails it before anything ran, and False asks for another connection. Every pooled
        connection opened before that one is then replaced at its next checkout, as SQLAlchemy
        does on a disconnect, so one retry is enough. Checked against SQLAlchemy 2.1.9:
        `_start_transaction` is the adapter's own (private) method for this."""
        raw = await connection.get_raw_connection()
        adapter: Any = raw.dbapi_connection
        try:
            await adapter._start_transaction()
        except Exception:
            if last or not adapter._connection.is_closed():
                raise
            self.write_engine.pool._invalidate(raw)
            return False
        return True

    async def ping(self) -> None:
        async with self.read_engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self._driver_engine.dispose()
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


def _in_transaction(driver: Any) -> bool:
    is_in_transaction = getattr(driver, "is_in_transaction", None)  # asyncpg
    if is_in_transaction is not None:
        return bool(is_in_transaction())
    return bool(getattr(driver, "in_transaction", False))  # aiosqlite


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


def _use_wal(cursor: Any, *, within_seconds: float = 5.0) -> None:
    """Put the file in WAL mode unless it is already (the mode is stored in the file).

    Even asking for the mode it already has needs the file to itself, and SQLite answers
    "database is locked" at once there instead of waiting (no busy handler): processes opening
    one file together failed that way. So: read first, and switch with a few retries, which
    only a brand-new file needs."""
    deadline = time.monotonic() + within_seconds
    while True:
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() == "wal":
            return
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # on a file nobody has used yet: once, at first start


def _sqlite_engine(
    url: URL,
    *,
    pool_size: int,
    immediate: bool,
    echo: bool,
    reset_on_return: bool = True,
    inline: bool = False,
) -> AsyncEngine:
    """`inline`: the writers, whose calls run on the loop's thread (`db/sqlite_inline.py`)."""
    extra: dict[str, Any] = {}
    if inline:
        path = url.database or ":memory:"
        extra["async_creator"] = functools.partial(
            connect_inline, path, wait_seconds=BUSY_TIMEOUT_MS / 1000
        )
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_reset_on_return="rollback" if reset_on_return else None,
        echo=echo,
        **extra,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _: ConnectionPoolEntry) -> None:
        # Let SQLAlchemy (not the sqlite3 module) decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Inline: SQLite must answer "busy" at once, and the call then waits on a thread.
        cursor.execute(f"PRAGMA busy_timeout={0 if inline else BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    begin_statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin_statement)

    return engine
