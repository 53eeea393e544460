"""The PostgreSQL pool after its server dropped every connection (what a restart does)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text

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


async def test_pooled_connections_to_a_restarted_server_are_replaced_without_an_error(
    database_url: str,
) -> None:
    db = Database(database_url, pool_size=4)
    try:
        before = await _backend_pids(db, 4)
        async with db.transaction() as session:
            await session.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        # At once, not after some idle time: every checkout is checked.
        after = await _backend_pids(db, 4)
        assert len(after) == 4
        assert len(after & before) <= 1  # at most the survivor that ran the kill
    finally:
        await db.dispose()
