"""runs.logs_removed_at and the indices retention reads by: events older than
FLOTILLA_EVENT_RETENTION_DAYS and the logs of runs finished longer ago than
FLOTILLA_LOG_RETENTION_DAYS are found without a scan

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 22:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import flotilla.server.db.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(
            sa.Column("logs_removed_at", flotilla.server.db.models.UTCDateTime(timezone=True))
        )
    op.create_index("ix_runs_logs_due", "runs", ["logs_removed_at", "finished_at"])
    op.create_index("ix_events_created_at", "events", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_events_created_at", table_name="events")
    op.drop_index("ix_runs_logs_due", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("logs_removed_at")
