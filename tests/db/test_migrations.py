"""One migration chain for SQLite and PostgreSQL, matching the models exactly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from tidings.db import migrate
from tidings.db.models import Base


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrated_schema_matches_the_models(profile: str, database_url: str) -> None:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()
    assert await migrate.current_revision(database_url) == migrate.head_revision()


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def test_downgrade_to_base_and_upgrade_again(profile: str, database_url: str) -> None:
    await _run(migrate.downgrade, database_url, "base")
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) <= {"alembic_version"}
        await _run(migrate.upgrade, database_url, "head")
        async with engine.connect() as conn:
            assert {"events", "jobs", "leases"} <= await conn.run_sync(_tables)
    finally:
        await engine.dispose()


async def _run(function: object, url: str, revision: str) -> None:
    import asyncio

    assert callable(function)
    await asyncio.to_thread(function, url, revision)


def test_revision_files_are_date_prefixed() -> None:
    versions = Path(migrate.MIGRATIONS_DIR) / "versions"
    names = sorted(p.name for p in versions.glob("*.py"))
    assert names
    assert all(name[:4].isdigit() and name[4] == "_" for name in names)
    for path in versions.glob("*.py"):
        assert "import tidings" not in path.read_text()
        assert "from tidings" not in path.read_text()
