"""users and groups get Unix UIDs/GIDs, given once and never reused

Existing users and groups are numbered in creation order from FLOTILLA_UID_MIN
(read from the environment, as the server reads it), and the counter
(`settings` row `unix_ids`) is left at the highest number given.

The columns stay nullable in the schema: on SQLite, NOT NULL needs a copy of the
table, and dropping `users` for it would cascade-delete every token, session and
membership. A CHECK constraint (PostgreSQL) or triggers (SQLite) refuse NULL
instead. A later migration that copies these tables on SQLite must recreate the
triggers.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 10:00:00.000000
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import flotilla.server.db.models
from flotilla.config import unix_id_range_from_env
from flotilla.core.unixids import next_unix_ids

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column) for users' UIDs and groups' GIDs.
NUMBERED = (("users", "uid"), ("groups", "gid"))

_UTC = flotilla.server.db.models.UTCDateTime(timezone=True)
_settings = sa.table(
    "settings",
    sa.column("key", sa.String(64)),
    sa.column("value", sa.JSON()),
    sa.column("updated_at", _UTC),
)


def upgrade() -> None:
    for table, column in NUMBERED:
        op.add_column(table, sa.Column(column, sa.Integer(), nullable=True))
    last = _backfill()
    op.bulk_insert(
        _settings,
        [{"key": "unix_ids", "value": {"last": last}, "updated_at": datetime.now(UTC)}],
    )
    for table, column in NUMBERED:
        op.create_index(f"uq_{table}_{column}", table, [column], unique=True)
        _refuse_null(table, column)


def _backfill() -> int | None:
    """Numbers for the rows that exist, oldest first; the highest given."""
    bind = op.get_bind()
    rows: list[tuple[datetime, str, str, str]] = []
    for table, _ in NUMBERED:
        t = sa.table(table, sa.column("id"), sa.column("name"), sa.column("created_at", _UTC))
        for id_, name, created_at in bind.execute(sa.select(t.c.id, t.c.name, t.c.created_at)):
            rows.append((created_at, name, table, id_))
    if not rows:
        return None
    rows.sort()
    numbers = next_unix_ids(None, unix_id_range_from_env(), len(rows))
    for (_, _, table, id_), number in zip(rows, numbers, strict=True):
        column = dict(NUMBERED)[table]
        t = sa.table(table, sa.column("id"), sa.column(column))
        bind.execute(sa.update(t).where(t.c.id == id_).values({column: number}))
    return numbers[-1]


def _refuse_null(table: str, column: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT ck_{table}_{column}_set "
            f"CHECK ({column} IS NOT NULL)"
        )
        return
    for verb, on in (("insert", "INSERT"), ("update", f"UPDATE OF {column}")):
        op.execute(
            f"CREATE TRIGGER {table}_{column}_set_on_{verb} BEFORE {on} ON {table} "
            f"WHEN NEW.{column} IS NULL "
            f"BEGIN SELECT RAISE(ABORT, '{table}.{column} must be set'); END"
        )


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, column in NUMBERED:
        if sqlite:
            for verb in ("insert", "update"):
                op.execute(f"DROP TRIGGER IF EXISTS {table}_{column}_set_on_{verb}")
        else:
            op.execute(f"ALTER TABLE {table} DROP CONSTRAINT ck_{table}_{column}_set")
        op.drop_index(f"uq_{table}_{column}", table_name=table)
        # Not in batch mode: a copy of `users` on SQLite would cascade-delete its
        # tokens and memberships; SQLite drops a column in place since 3.35.
        op.drop_column(table, column)
    op.execute(_settings.delete().where(_settings.c.key == "unix_ids"))
