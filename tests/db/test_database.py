"""The PostgreSQL pool after its server dropped every connection (what a restart does)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from sqlalchemy import text

from tidings.db.database import Database

pytestmark = pytest.mark.profiles("scaled")


def _opener(db: Database, kind: str) -> Callable[[], AbstractAsyncContextManager[Any]]:
    openers: dict[str, Callable[[], AbstractAsyncContextManager[Any]]] = {
        "transaction": db.transaction,
        "read": db.read,
        "write_connection": db.write_connection,
    }
    return openers[kind]


async def _backend_pids(db: Database, count: int, kind: str = "transaction") -> set[int]:
    """Check out `count` pooled connections at once (through `kind`); their server process
    ids."""
    pids: set[int] = set()
    entered = asyncio.Barrier(count)

    async def hold() -> None:
        async with _opener(db, kind)() as session:
            pids.add(int(await session.scalar(text("SELECT pg_backend_pid()"))))
            await entered.wait()

    await asyncio.gather(*(hold() for _ in range(count)))
    return pids


@pytest.mark.parametrize("kind", ["transaction", "read", "write_connection"])
async def test_pooled_connections_to_a_restarted_server_are_replaced_without_an_error(
    database_url: str, kind: str
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
        # At once, not after some idle time: every checkout is checked (by its BEGIN).
        after = await _backend_pids(db, 4, kind)
        assert len(after) == 4
        assert len(after & before) <= 1  # at most the survivor that ran the kill
    finally:
        await db.dispose()


async def _alive(db: Database, pids: set[int]) -> set[int]:
    async with db.read() as session:
        rows = await session.execute(
            text("SELECT pid FROM pg_stat_activity WHERE pid = ANY(:pids)"), {"pids": list(pids)}
        )
        return {int(pid) for (pid,) in rows}


async def test_a_dead_driver_connection_leaves_no_live_sibling_outside_the_pool(
    database_url: str,
) -> None:
    """The driver pool after a restart: a connection opened meanwhile and checked out while
    a dead one fails goes back to the pool, so shutting down closes it (the garbage collector
    would otherwise find it open, and asyncpg cannot close a connection from there)."""
    db = Database(database_url, pool_size=4)
    try:
        doomed_ready, sibling_ready, doomed_failed = (asyncio.Event() for _ in range(3))
        pids: dict[str, int] = {}

        async def doomed() -> None:
            async with db.driver_connection() as conn:
                pids["doomed"] = await conn.fetchval("SELECT pg_backend_pid()")
                doomed_ready.set()
                await sibling_ready.wait()
                await conn.fetchval("SELECT 1")  # its server process is gone by now

        async def sibling() -> None:
            await doomed_ready.wait()
            async with db.transaction() as session:
                await session.execute(
                    text("SELECT pg_terminate_backend(:pid)"), {"pid": pids["doomed"]}
                )
            async with db.driver_connection() as conn:  # opened after the "restart"
                pids["sibling"] = await conn.fetchval("SELECT pg_backend_pid()")
                sibling_ready.set()
                await doomed_failed.wait()

        async def watch_doomed() -> None:
            try:
                await doomed()
            finally:
                doomed_failed.set()

        outcomes = await asyncio.gather(watch_doomed(), sibling(), return_exceptions=True)
        assert outcomes[1] is None
        assert outcomes[0] is not None  # the dead connection's statement failed
        async with db.driver_connection() as conn:  # the pool still serves, on a fresh one
            assert await conn.fetchval("SELECT pg_backend_pid()") not in set(pids.values())
        await db.dispose()
        assert await _alive(db, {pids["sibling"]}) == set()
    finally:
        await db.dispose()
