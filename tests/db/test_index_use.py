"""The job runner's and the delivery log's statements find their rows by id, whatever the
planner believes about the table: never by searching the status indexes, which would read
every queued or running job (or queued or sending message) to pick out the few named.

SQLite searched them always. PostgreSQL did while its statistics lagged behind a burst (a
backlog enqueued after the last ANALYZE): bench.delivery read 50-100 index entries of
ix_jobs_status_run_at and 100-180 of ix_outbound_messages_workspace_status per delivery.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event

from tidings.db.base import new_id, utcnow
from tidings.db.database import Database
from tidings.db.sqlite_values import hex_array
from tidings.delivery import log_store
from tidings.jobs import store as job_store
from tidings.jobs import worker

BURST = 5_000
_STATUS_INDEXES = (
    "ix_jobs_status_run_at",
    "ix_jobs_status_lease",
    "ix_outbound_messages_workspace_status",
)


@pytest.fixture
async def after_burst(db: Database) -> Database:
    await _burst(db)
    return db


async def _burst(db: Database) -> None:
    """A few finished jobs and messages, statistics taken, then a burst of queued ones."""
    workspace = new_id()
    async with db.driver_connection() as conn:
        if db.dialect == "postgresql":
            await conn.execute(
                "INSERT INTO workspaces (id, name, created_at) VALUES ($1, 'w', now())", workspace
            )
            for status, count in (("succeeded", 20), ("queued", BURST)):
                await conn.execute(
                    "INSERT INTO jobs (id, name, payload, status, run_at, attempts, "
                    "max_attempts, created_at) SELECT gen_random_uuid(), 'j', '{}', $1, "
                    "now() - interval '1 minute', 0, 5, now() FROM generate_series(1, $2)",
                    status,
                    count,
                )
                await conn.execute(
                    "INSERT INTO outbound_messages (id, workspace_id, recipient, content, "
                    "metadata, status, attempts, created_at, updated_at) SELECT "
                    "gen_random_uuid(), $1, 'r', '{}', '{}', $2, 0, now(), now() "
                    "FROM generate_series(1, $3)",
                    workspace,
                    "sent" if status == "succeeded" else status,
                    count,
                )
                if status == "succeeded":
                    await conn.execute("ANALYZE jobs")
                    await conn.execute("ANALYZE outbound_messages")
            return
        await conn.execute(
            "INSERT INTO workspaces (id, name, created_at) VALUES (?, 'w', '2026-01-01')",
            (workspace.hex,),
        )
        await conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO jobs (id, name, payload, status, run_at, attempts, "
            "max_attempts, created_at) SELECT lower(hex(randomblob(16))), 'j', '{}', 'queued', "
            "'2026-01-01 00:00:00.000000', 0, 5, '2026-01-01 00:00:00.000000' FROM n",
            (BURST,),
        )
        await conn.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
            "INSERT INTO outbound_messages (id, workspace_id, recipient, content, "
            "metadata, status, attempts, created_at, updated_at) SELECT "
            "lower(hex(randomblob(16))), ?, 'r', '{}', '{}', 'queued', 0, "
            "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000' FROM n",
            (BURST, workspace.hex),
        )
        await conn.commit()


async def _plan(db: Database, statement: str, *params: Any) -> str:
    async with db.driver_connection() as conn:
        if db.dialect == "postgresql":
            rows = await conn.fetch(f"EXPLAIN {statement}", *params)
            return "\n".join(row[0] for row in rows)
        rows = await conn.execute_fetchall(f"EXPLAIN QUERY PLAN {statement}", params)
        return "\n".join(str(row[-1]) for row in rows)


async def _ids(db: Database, table: str) -> list[uuid.UUID]:
    query = f"SELECT id FROM {table} LIMIT 8"  # noqa: S608 - the two table names above
    async with db.driver_connection() as conn:
        if db.dialect == "postgresql":
            return [row[0] for row in await conn.fetch(query)]
        return [uuid.UUID(hex=row[0]) for row in await conn.execute_fetchall(query)]


def _searched_by_status(plan: str) -> list[str]:
    return [index for index in _STATUS_INDEXES if index in plan]


async def test_claims_and_completions_find_their_jobs_by_id(after_burst: Database) -> None:
    db = after_burst
    ids, now = await _ids(db, "jobs"), utcnow()
    lease = now + timedelta(seconds=30)
    if db.dialect == "postgresql":
        plans = [
            await _plan(db, job_store._PG_CLAIM, "node", lease, ids, now),
            await _plan(db, job_store._PG_COMPLETE, now, ids, "node"),
        ]
    else:
        hexes = hex_array(ids)
        plans = [
            await _plan(db, job_store._SQLITE_CLAIM, "node", "2030", hexes, "2030"),
            await _plan(db, job_store._SQLITE_COMPLETE, "2030", hexes, "node"),
        ]
    for plan in plans:
        assert _searched_by_status(plan) == [], plan


async def test_delivery_starts_reads_and_finishes_find_their_messages_by_id(
    after_burst: Database,
) -> None:
    db = after_burst
    ids, now = await _ids(db, "outbound_messages"), utcnow()
    if db.dialect == "postgresql":
        none = [None] * len(ids)
        plans = [
            await _plan(db, log_store._PG_START, now, ids),
            await _plan(db, log_store._PG_UNTRIED, ids),
            await _plan(
                db,
                log_store._PG_FINISH,
                now,
                ids,
                ["sent"] * len(ids),
                none,
                none,
                none,
                none,
                none,
                none,
            ),
        ]
    else:
        hexes = hex_array(ids)
        plans = [
            await _plan(db, log_store._SQLITE_START, "2030", hexes),
            await _plan(db, log_store._SQLITE_UNTRIED, hexes),
            await _plan(db, log_store._SQLITE_SENDING, hexes),
        ]
    for plan in plans:
        assert _searched_by_status(plan) == [], plan


async def _plan_through_sqlalchemy(db: Database, statement: Any, params: dict[str, Any]) -> str:
    """The plan of a Core statement as the worker runs it (`write_connection`): the statement
    SQLAlchemy sends, EXPLAINed instead of run, with the values it binds (expanding IN lists
    included)."""
    prefix = "EXPLAIN " if db.dialect == "postgresql" else "EXPLAIN QUERY PLAN "
    lines: list[str] = []

    def explain(*args: Any) -> tuple[str, Any]:
        return prefix + args[2], args[3]

    def capture(*args: Any) -> None:
        rows = args[1].fetchall()
        lines.extend(row[0] if db.dialect == "postgresql" else str(row[-1]) for row in rows)

    engine = db.write_engine.sync_engine
    event.listen(engine, "before_cursor_execute", explain, retval=True)
    event.listen(engine, "after_cursor_execute", capture)
    try:
        async with db.write_connection() as conn:
            await conn.execute(statement, params)
    finally:
        event.remove(engine, "before_cursor_execute", explain)
        event.remove(engine, "after_cursor_execute", capture)
    assert lines, "no plan captured"
    return "\n".join(lines)


async def test_the_workers_retries_releases_and_heartbeats_find_their_jobs_by_id(
    after_burst: Database,
) -> None:
    db = after_burst
    ids, now = await _ids(db, "jobs"), utcnow()
    owned = {"b_ids": ids, "b_node": "node"}
    plans = [
        await _plan_through_sqlalchemy(db, worker._DEAD, {**owned, "b_now": now, "b_error": "e"}),
        await _plan_through_sqlalchemy(
            db, worker._RETRY, {**owned, "b_run_at": now, "b_error": "e"}
        ),
        await _plan_through_sqlalchemy(db, worker._RELEASE, {**owned, "b_now": now}),
        await _plan_through_sqlalchemy(db, worker._HEARTBEAT, {**owned, "b_lease": now}),
    ]
    for plan in plans:
        assert _searched_by_status(plan) == [], plan
