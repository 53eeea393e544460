"""connectors: the masked credentials, kept beside the sealed ones

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24

Reading connectors (the list, one connector) showed masked credentials by opening the sealed
ones each time; the mask is now written with them. Rows written before this revision have none
and are masked from their sealed credentials when read.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("connectors") as batch:
        batch.add_column(sa.Column("credentials_masked", JSON_DOC, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("connectors") as batch:
        batch.drop_column("credentials_masked")
