"""message search: SQLite FTS5 table kept by triggers; PostgreSQL GIN expression index

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

SQLite: `messages_fts` is an external-content FTS5 table over `messages.body`, keyed by the
implicit rowid of `messages` (VACUUM keeps rowids of tables that have an index; `messages` has
its primary key). It stores only the index, not a second copy of the text. A later migration that
rebuilds `messages` on SQLite (batch mode: copy, drop, rename) drops these triggers and renumbers
rowids: it must recreate the triggers and run
`INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')`.
tests/search/test_search.py::test_the_search_index_is_in_place checks they exist at head.

PostgreSQL: a GIN index on the expression `to_tsvector('simple', replace(body, '<', ' '))`
rather than a stored generated column: results are ordered by time, never by rank, so no stored
vector is ever read; the index needs no table rewrite, no extra column on `messages`, and cannot
drift from the text. The parser skips whatever looks like an HTML tag (`Vec<String>`,
`a<b and c>d`); with `<` blanked out, every word of a message is indexed. 'simple': no stemming
and no stop words, as chat is many languages and short words ("go", "it") matter.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The names are repeated in tidings.search.models (migrations never import app code).
PG_INDEX = "ix_messages_search"

_SQLITE_UP = [
    # remove_diacritics 2: "creme" finds "crème"; no stemming, like PostgreSQL's 'simple'.
    """CREATE VIRTUAL TABLE messages_fts USING fts5(
        body, content='messages', content_rowid='rowid',
        tokenize='unicode61 remove_diacritics 2'
    )""",
    """CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts(rowid, body) VALUES (new.rowid, new.body);
    END""",
    # An external-content 'delete' must be given exactly the text that was indexed.
    """CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
    END""",
    # Edits and deletions (which empty the body) are updates of `body`; other updates
    # (reply counts, pins) do not touch the index.
    """CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
        INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.rowid, old.body);
        INSERT INTO messages_fts(rowid, body) VALUES (new.rowid, new.body);
    END""",
    # Index the messages written before this revision.
    "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')",
]

_SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS messages_fts_update",
    "DROP TRIGGER IF EXISTS messages_fts_delete",
    "DROP TRIGGER IF EXISTS messages_fts_insert",
    "DROP TABLE IF EXISTS messages_fts",
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_UP:
            op.execute(statement)
        return
    # Plain CREATE INDEX (not CONCURRENTLY): Alembic runs in a transaction, and `messages` is
    # new in 0003. Queries must spell the expression exactly like this for the planner to use it.
    op.create_index(
        PG_INDEX,
        "messages",
        [sa.text("to_tsvector('simple'::regconfig, replace(body, '<', ' '))")],
        postgresql_using="gin",
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_DOWN:
            op.execute(statement)
        return
    op.drop_index(PG_INDEX, table_name="messages")
