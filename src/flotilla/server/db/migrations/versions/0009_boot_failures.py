"""nodes.failed_at, backoffs.last_failure_at: a fleet's boot failures in a row,
counted once each, across restarts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 18:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import flotilla.server.db.models

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "nodes", sa.Column("failed_at", flotilla.server.db.models.UTCDateTime(timezone=True))
    )
    op.add_column(
        "backoffs",
        sa.Column("last_failure_at", flotilla.server.db.models.UTCDateTime(timezone=True)),
    )


def downgrade() -> None:
    with op.batch_alter_table("backoffs") as batch:
        batch.drop_column("last_failure_at")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_column("failed_at")
