"""Fixtures: a database URL for each store (SQLite always, PostgreSQL when
FLOTILLA_TEST_PG_URL is set), and a server app driven in-process through
httpx.ASGITransport with its reconcilers running."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from flotilla.config import Settings
from flotilla.server.app import create_app
from flotilla.server.context import ServerContext
from tests.factories import ADMIN_TOKEN, AUTH, cleanup_data_dir

PG_URL = os.environ.get("FLOTILLA_TEST_PG_URL")


def _pg_admin_url() -> str:
    assert PG_URL
    return PG_URL.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    if not PG_URL:
        pytest.skip("FLOTILLA_TEST_PG_URL not set")
    name = f"flotilla_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_pg_admin_url())
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    base = _pg_admin_url().rsplit("/", 1)[0]
    yield f"{base}/{name}"
    admin = await asyncpg.connect(_pg_admin_url())
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """Parametrizes a test over both stores (None means the SQLite default)."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "data"
    yield path
    cleanup_data_dir(path)


def make_settings(data_dir: Path, database_url: str | None = None, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "admin_token": ADMIN_TOKEN,
        "local_gpus": None,
        "stop_grace_seconds": 2.0,
        "resync_seconds": 0.3,
        "agent_idle_exit_seconds": 60.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Api:
    """A running app and an authenticated client for it."""

    def __init__(self, client: httpx.AsyncClient, ctx: ServerContext) -> None:
        self.client = client
        self.ctx = ctx


async def open_api(settings: Settings, **kwargs: object) -> AsyncIterator[Api]:
    app = create_app(settings, **kwargs)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://flotilla", headers=AUTH
        ) as client:
            yield Api(client, app.state.ctx)


@pytest.fixture
async def api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    """The app on each store."""
    async for item in open_api(make_settings(data_dir, database_url)):
        yield item


@pytest.fixture
async def sqlite_api(data_dir: Path) -> AsyncIterator[Api]:
    """The app on SQLite only, for execution tests whose store does not matter."""
    async for item in open_api(make_settings(data_dir)):
        yield item


@pytest.fixture
async def gpu_api(data_dir: Path) -> AsyncIterator[Api]:
    """The app with two declared H100s."""
    async for item in open_api(make_settings(data_dir, local_gpus="H100:2")):
        yield item
