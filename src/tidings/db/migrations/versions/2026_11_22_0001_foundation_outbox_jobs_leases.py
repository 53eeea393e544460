"""foundation: event outbox, stream sequences, jobs, cron schedules, leases

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Column types spelled out here: migrations never import application code.
BIGINT_PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
UTC_TIME = sa.DateTime(timezone=True)
ACTIVE_JOB = sa.text("status IN ('queued', 'running')")
PENDING_EVENT = sa.text("dispatched_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "event_streams",
        sa.Column("stream_key", sa.String(200), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("stream_key", name="pk_event_streams"),
    )
    op.create_table(
        "events",
        sa.Column("position", BIGINT_PK, autoincrement=True, nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.String(100), nullable=False),
        sa.Column("workspace_id", sa.Uuid(), nullable=True),
        sa.Column("stream_key", sa.String(200), nullable=False),
        sa.Column("stream_seq", sa.BigInteger(), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.Column("occurred_at", UTC_TIME, nullable=False),
        sa.Column("dispatched_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("position", name="pk_events"),
        sa.UniqueConstraint("id", name="uq_events_id"),
        sa.UniqueConstraint("stream_key", "stream_seq", name="uq_events_stream_seq"),
    )
    op.create_index(
        "ix_events_pending",
        "events",
        ["position"],
        sqlite_where=PENDING_EVENT,
        postgresql_where=PENDING_EVENT,
    )
    op.create_index("ix_events_workspace_position", "events", ["workspace_id", "position"])
    op.create_table(
        "processed_events",
        sa.Column("consumer", sa.String(100), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("processed_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("consumer", "event_id", name="pk_processed_events"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("payload", JSON_DOC, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("dedupe_key", sa.String(200), nullable=True),
        sa.Column("run_at", UTC_TIME, nullable=False),
        sa.Column("published_at", UTC_TIME, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("locked_by", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", UTC_TIME, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("finished_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_status_run_at", "jobs", ["status", "run_at"])
    op.create_index("ix_jobs_status_lease", "jobs", ["status", "lease_expires_at"])
    op.create_index(
        "uq_jobs_active_dedupe_key",
        "jobs",
        ["dedupe_key"],
        unique=True,
        sqlite_where=ACTIVE_JOB,
        postgresql_where=ACTIVE_JOB,
    )
    op.create_table(
        "periodic_schedules",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("cron", sa.String(100), nullable=False),
        sa.Column("next_run_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_periodic_schedules"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
    )


def downgrade() -> None:
    for table in (
        "leases",
        "periodic_schedules",
        "jobs",
        "processed_events",
        "events",
        "event_streams",
    ):
        op.drop_table(table)
