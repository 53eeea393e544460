"""Where the message index lives. No ORM tables: each engine has its own index object.

- SQLite: `messages_fts`, an external-content FTS5 table over `messages.body` keyed by the rowid
  of `messages`, kept in step by triggers (FTS5 shadow tables `messages_fts_*` come with it).
- PostgreSQL: `ix_messages_search`, a GIN index on `to_tsvector('simple', replace(body, '<', ' '))`
  (`search_document` below builds the same expression for queries).

Both are created by migration 0004 and are not in the SQLAlchemy metadata, so Alembic's schema
comparison (autogenerate, tests/db/test_migrations.py) would report them as objects to drop. The
comparator below, registered when this module is imported, takes those reports out.
"""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import comparators
from alembic.operations import ops
from alembic.util import DispatchPriority, PriorityDispatchResult
from sqlalchemy import (
    ColumnClause,
    ColumnElement,
    ColumnExpressionArgument,
    Integer,
    column,
    func,
    literal_column,
    table,
)

FTS_TABLE = "messages_fts"
# FTS5 creates these next to an external-content table ("content" only without content=).
FTS_SHADOW_TABLES = frozenset(
    f"{FTS_TABLE}_{suffix}" for suffix in ("data", "idx", "docsize", "config", "content")
)
PG_INDEX = "ix_messages_search"

# A lightweight table clause (not in the metadata) to write FTS5 queries with SQLAlchemy.
messages_fts = table(FTS_TABLE, column("rowid", Integer))
# The hidden column named like the table: `messages_fts MATCH :query`, `snippet(messages_fts, …)`.
fts_table_column: ColumnClause[Any] = literal_column(FTS_TABLE)
# The text-search configuration, as a literal: a bound parameter would not match the index.
TS_CONFIG: ColumnClause[Any] = literal_column("'simple'::regconfig")


def search_document(body: ColumnExpressionArgument[str]) -> ColumnElement[Any]:
    """The indexed expression of migration 0004, spelled with literals so the planner uses it."""
    blanked = func.replace(body, literal_column("'<'"), literal_column("' '"))
    return func.to_tsvector(TS_CONFIG, blanked)


_HIDDEN_TABLES = FTS_SHADOW_TABLES | {FTS_TABLE}


def _visible(op: ops.MigrateOperation) -> bool:
    if isinstance(op, ops.DropTableOp):
        return op.table_name not in _HIDDEN_TABLES
    if isinstance(op, ops.DropIndexOp):
        return op.index_name != PG_INDEX
    return True


@comparators.dispatch_for("autogenerate", priority=DispatchPriority.LAST)
def _hide_search_index(autogen_context: Any, upgrade_ops: ops.UpgradeOps) -> PriorityDispatchResult:
    kept: list[ops.MigrateOperation] = []
    for op in upgrade_ops.ops:
        if isinstance(op, ops.ModifyTableOps):
            op.ops = [inner for inner in op.ops if _visible(inner)]
            if op.is_empty():
                continue
        if _visible(op):
            kept.append(op)
    upgrade_ops.ops = kept
    return PriorityDispatchResult.CONTINUE
