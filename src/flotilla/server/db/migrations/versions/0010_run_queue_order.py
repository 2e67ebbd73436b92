"""runs.owner, runs.priority and the queue indices: the pending queue read a window
at a time and paged through, whatever its length

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 18:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Runs whose priority the scheduler still reads; finished ones keep the default.
_ACTIVE = ("pending", "provisioning", "starting", "running")


def upgrade() -> None:
    op.add_column("runs", sa.Column("owner", sa.String(64), nullable=False, server_default=""))
    op.add_column("runs", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "UPDATE runs SET owner = (SELECT owner FROM recipes WHERE recipes.id = runs.recipe_id)"
        )
    )
    runs = sa.table(
        "runs",
        sa.column("id", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("status", sa.String),
        sa.column("priority", sa.Integer),
    )
    active = bind.execute(sa.select(runs.c.id, runs.c.spec).where(runs.c.status.in_(_ACTIVE)))
    for run_id, spec in list(active):
        priority = int((spec or {}).get("priority") or 0)
        if priority:
            bind.execute(runs.update().where(runs.c.id == run_id).values(priority=priority))
    op.create_index("ix_runs_queue", "runs", ["status", "owner", "priority", "queued_at"])
    op.create_index("ix_runs_pending", "runs", ["status", "queued_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_runs_pending", table_name="runs")
    op.drop_index("ix_runs_queue", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("priority")
        batch.drop_column("owner")
