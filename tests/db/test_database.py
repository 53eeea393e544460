"""The PostgreSQL pool after its server dropped every connection (what a restart does)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tidings.db import database
from tidings.db.database import Database

pytestmark = pytest.mark.profiles("scaled")


async def _backend_pids(db: Database, count: int) -> set[int]:
    """Check out `count` pooled connections at once; their server process ids."""
    pids: set[int] = set()
    entered = asyncio.Barrier(count)

    async def hold() -> None:
        async with db.transaction() as session:
            pids.add(int(await session.scalar(text("SELECT pg_backend_pid()"))))
            await entered.wait()

    await asyncio.gather(*(hold() for _ in range(count)))
    return pids


async def _kill_all_but_this(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )


async def test_connections_idle_in_the_pool_are_pinged_and_replaced(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "IDLE_PING_SECONDS", 0.05)
    db = Database(database_url, pool_size=4)
    try:
        before = await _backend_pids(db, 4)
        await _kill_all_but_this(db)
        await asyncio.sleep(0.1)  # longer than IDLE_PING_SECONDS: every pooled one is idle
        after = await _backend_pids(db, 4)  # no error: dead ones fail their ping, new ones come
        assert len(after) == 4
        assert len(after & before) <= 1  # at most the survivor that ran the kill
    finally:
        await db.dispose()


async def test_a_connection_in_use_that_meets_a_dead_server_fails_once(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Recently used connections skip the ping (a round trip per checkout under load): the one
    # that finds the server gone fails its transaction, and the whole pool is invalidated.
    monkeypatch.setattr(database, "IDLE_PING_SECONDS", 3600.0)
    db = Database(database_url, pool_size=4)
    try:
        await _backend_pids(db, 4)
        await _kill_all_but_this(db)
        errors: list[DBAPIError] = []
        for _ in range(4):
            try:
                async with db.transaction() as session:
                    await session.execute(text("SELECT 1"))
            except DBAPIError as error:
                errors.append(error)
        assert len(errors) <= 1
        assert all(error.connection_invalidated for error in errors)
        assert len(await _backend_pids(db, 4)) == 4
    finally:
        await db.dispose()
