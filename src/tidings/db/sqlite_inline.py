"""SQLite's writer connections, run on the event loop's own thread.

aiosqlite runs every call on a worker thread: one hand-off there and back per statement, about
70 µs on a 2-core machine, while the statements of a chat send take 1 to 30 µs each. A send is
eight of them (BEGIN, the access check, the sequence, the message, the read position, the two
event statements, COMMIT), so most of its write time was hand-offs. The writer connections
(one write lock for the process, `Database`) run their calls inline instead, through the same
aiosqlite `Connection` API that SQLAlchemy and the stores use. The readers keep their threads:
a long search must not stop the loop.

Two things could still make an inline call wait, and neither is allowed to stop the loop:

- **Another process's write lock** (a CLI command on the same file). The connection has no
  busy timeout of its own: SQLite answers "busy" at once, and that call is retried on a worker
  thread that waits for the lock as long as the reader connections would.
- **Checkpoints**, which copy the WAL into the database file and fsync it. Automatic
  checkpoints (run by the committing connection) are off; a worker thread runs a passive one,
  on a connection of its own, at most once a second after writes.

With `synchronous=NORMAL` in WAL mode a COMMIT appends to the WAL without an fsync, so what
stays inline is CPU, as it would be on the thread.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Callable, Generator
from typing import Any

import aiosqlite

from tidings.infra.logging import get_logger

_log = get_logger(__name__)

# SQLITE_BUSY and SQLITE_LOCKED, in the primary (low) byte of any extended result code.
_BUSY_CODES = frozenset({5, 6})
CHECKPOINT_INTERVAL_SECONDS = 1.0


def _is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return (code & 0xFF) in _BUSY_CODES
    return "locked" in str(error)


class _Checkpointer:
    """Passive WAL checkpoints on a worker thread, one at a time."""

    def __init__(self, path: str) -> None:
        self._path = path
        # Not before the first interval: the file is switched to WAL right after connecting.
        self._due = time.monotonic() + CHECKPOINT_INTERVAL_SECONDS
        self._running = False

    def wrote(self) -> None:
        """A call ran on the writer; check the clock (cheap) and start a checkpoint if due."""
        now = time.monotonic()
        if self._running or now < self._due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # closing outside the loop: SQLite checkpoints on the last close
            return
        self._due = now + CHECKPOINT_INTERVAL_SECONDS
        self._running = True
        future = loop.run_in_executor(None, self._checkpoint)
        future.add_done_callback(self._done)

    def _done(self, future: asyncio.Future[None]) -> None:
        self._running = False
        error = future.exception() if not future.cancelled() else None
        if error is not None:
            _log.warning("sqlite_checkpoint_failed", error=str(error))

    def _checkpoint(self) -> None:
        # A connection per checkpoint (once a second at most): one kept open could hold a view
        # of the file from before it was switched to WAL, and then checkpoint nothing.
        connection = sqlite3.connect(self._path, isolation_level=None)
        try:
            connection.execute("PRAGMA busy_timeout=1000")
            connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            connection.close()


class _InlineCalls:
    """Takes the place of aiosqlite's queue to its worker thread: each call runs at once, on the
    caller's thread, and its future is settled before `_execute` awaits it (so the await does
    not yield). A call SQLite refuses as busy goes to a worker thread that waits."""

    def __init__(self, path: str, wait_seconds: float) -> None:
        self.connection: sqlite3.Connection | None = None
        self._wait_ms = int(wait_seconds * 1000)
        self.checkpointer = _Checkpointer(path)

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except sqlite3.OperationalError as error:
            if future is None or self.connection is None or not _is_busy(error):
                _settle_error(future, error)
                return
            waiting = asyncio.get_running_loop().run_in_executor(None, self._waiting, function)
            waiting.add_done_callback(functools.partial(_chain, future))
            return
        except BaseException as error:  # handed to the awaiting caller
            _settle_error(future, error)
            return
        if self.connection is not None:
            self.checkpointer.wrote()
        if future is not None and not future.done():
            future.set_result(result)

    def _waiting(self, function: Callable[[], Any]) -> Any:
        # Only the one caller awaiting this call uses the connection meanwhile (write lock).
        assert self.connection is not None  # noqa: S101 - checked by put_nowait
        self.connection.execute(f"PRAGMA busy_timeout={self._wait_ms}")
        try:
            return function()
        finally:
            self.connection.execute("PRAGMA busy_timeout=0")


def _settle_error(future: asyncio.Future[Any] | None, error: BaseException) -> None:
    if future is not None and not future.done():
        future.set_exception(error)


def _chain(target: asyncio.Future[Any], source: asyncio.Future[Any]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection without its worker thread (see the module's docstring)."""

    def __init__(self, path: str, *, wait_seconds: float) -> None:
        calls = _InlineCalls(path, wait_seconds)

        def connector() -> sqlite3.Connection:
            # Checked across threads by the write lock, not by sqlite3: a busy call and the
            # checkpointer's connection are the only other threads.
            connection = sqlite3.connect(path, check_same_thread=False)
            connection.execute("PRAGMA busy_timeout=0")
            connection.execute("PRAGMA wal_autocheckpoint=0")
            calls.connection = connection
            return connection

        super().__init__(connector, iter_chunk_size=64)
        self._calls = calls
        self._tx = calls  # type: ignore[assignment]

    def __await__(self) -> Generator[Any, None, aiosqlite.Connection]:
        return self._connect().__await__()  # no worker thread to start

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            self._calls.connection = None


async def connect_inline(path: str, *, wait_seconds: float) -> InlineConnection:
    connection = InlineConnection(path, wait_seconds=wait_seconds)
    await connection._connect()
    return connection
