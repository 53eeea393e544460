"""The SQLite writer runs its calls on the event loop's thread: nothing there may wait on a lock
or a checkpoint (`db/sqlite_inline.py`)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from tidings.db import sqlite_inline
from tidings.db.database import Database

pytestmark = pytest.mark.profiles("embedded")

_HOLD_THE_WRITE_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
db.execute("INSERT INTO notes (body) VALUES ('from the other process')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("COMMIT")
"""


async def _database(tmp_path: Path) -> Database:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'inline.db'}")
    async with db.transaction() as session:
        await session.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"))
    return db


async def test_the_writer_runs_on_the_loop_thread_without_a_worker_thread(tmp_path: Path) -> None:
    db = await _database(tmp_path)
    try:
        async with db.driver_connection() as conn:
            assert isinstance(conn, sqlite_inline.InlineConnection)
            assert not conn._thread.is_alive()
            ((autocheckpoint,),) = await conn.execute_fetchall("PRAGMA wal_autocheckpoint")
            assert autocheckpoint == 0  # checkpoints happen on a worker thread instead
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO notes (body) VALUES ('hello')"))
        async with db.read() as session:
            assert await session.scalar(text("SELECT body FROM notes")) == "hello"
    finally:
        await db.dispose()


async def test_another_processs_write_lock_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    db = await _database(tmp_path)
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLD_THE_WRITE_LOCK,
        str(tmp_path / "inline.db"),
        "0.6",
        stdout=asyncio.subprocess.PIPE,
    )
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    try:
        assert holder.stdout is not None
        assert await holder.stdout.readline() == b"locked\n"
        started = time.monotonic()
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO notes (body) VALUES ('from here')"))
        waited = time.monotonic() - started
        assert waited > 0.3  # it did wait for the other process's COMMIT...
        assert ticks >= 15  # ...while the loop kept running
        async with db.read() as session:
            bodies = (await session.scalars(text("SELECT body FROM notes ORDER BY id"))).all()
        assert bodies == ["from the other process", "from here"]
    finally:
        ticker.cancel()
        await holder.wait()
        await db.dispose()


async def test_the_wal_is_checkpointed_off_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_inline, "CHECKPOINT_INTERVAL_SECONDS", 0.2)
    db = await _database(tmp_path)
    main_file = tmp_path / "inline.db"
    try:
        await asyncio.sleep(0.3)
        size_before = main_file.stat().st_size
        for _ in range(20):  # ~2 MB into the WAL; automatic checkpoints are off
            async with db.transaction() as session:
                await session.execute(
                    text("INSERT INTO notes (body) VALUES (:body)"), {"body": "x" * 100_000}
                )

        async def copied_into_the_main_file() -> bool:
            async with db.transaction() as session:  # a write after the interval starts one
                await session.execute(text("SELECT 1"))
            await asyncio.sleep(0.1)
            return main_file.stat().st_size > size_before + 1_000_000

        deadline = time.monotonic() + 5
        while not await copied_into_the_main_file():
            assert time.monotonic() < deadline, "the WAL was never checkpointed"
            await asyncio.sleep(0.2)
    finally:
        await db.dispose()
