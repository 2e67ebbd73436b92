"""usage(node, ended_at): metering finds a node's rows that end after a point with
an index, not a scan of every row ever metered

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 18:50:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_usage_node_ended_at", "usage", ["node", "ended_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_node_ended_at", table_name="usage")
