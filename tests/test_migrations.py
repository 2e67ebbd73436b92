"""The Alembic migrations build exactly the schema the models describe, on both
stores, and the newest one can be undone and redone."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from flotilla.server.db.engine import create_engine
from flotilla.server.db.migrate import alembic_config, upgrade_to_head
from flotilla.server.db.models import Base

pytestmark = pytest.mark.timeout(60)


def _differences(connection: Connection) -> list[object]:
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "render_as_batch": True}
    )
    return list(compare_metadata(context, Base.metadata))


def _down_and_up(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.downgrade(config, "-1")
    command.upgrade(config, "head")


async def test_migrations_match_the_models(database_url: str | None, tmp_path: Path) -> None:
    engine = create_engine(database_url or f"sqlite:///{tmp_path / 'm.db'}")
    try:
        await upgrade_to_head(engine)
        async with engine.begin() as conn:
            assert await conn.run_sync(_differences) == []
            await conn.run_sync(_down_and_up)
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()
