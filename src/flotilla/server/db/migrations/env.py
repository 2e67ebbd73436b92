"""Alembic environment. The server runs migrations in-process (see `migrate.py`),
handing over its connection; developers can also run `alembic` with
FLOTILLA_DATABASE_URL set (sync drivers) to autogenerate a revision."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from flotilla.server.db.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite can only ALTER through table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    url = os.environ.get("FLOTILLA_DATABASE_URL", "sqlite:///flotilla-dev.db")
    with create_engine(url).connect() as conn:
        _run(conn)
