"""Fixtures: a database URL for each store (SQLite always, PostgreSQL when
FLOTILLA_TEST_PG_URL is set), and a server app driven in-process through
httpx.ASGITransport with its reconcilers running."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from flotilla.config import Settings
from flotilla.server.app import create_app
from flotilla.server.context import ServerContext
from tests.factories import (
    ADMIN_TOKEN,
    AUTH,
    cleanup_data_dir,
    remove_test_accounts,
    unused_uid_block,
    xdist_worker,
)

PG_URL = os.environ.get("FLOTILLA_TEST_PG_URL")

# Test servers share this machine's accounts (/etc/passwd). Isolated, each would
# make `flo-admin`, `flo-alice`... with the numbers of its own UID block, and a node
# refuses an account that exists with other numbers, so servers in parallel workers
# would fail each other's tasks (two real control planes sharing hosts need
# disjoint UID ranges and account names alike). So the suite's servers run with
# FLOTILLA_RUN_AS_USER=0 (here, and in the environment `flo server` subprocesses
# inherit), except the isolation tests: one xdist group, a UID block each
# (`test_tenant_isolation.py`, `test_run_as_default.py`...).
# FLOTILLA_TEST_ISOLATE=1 runs every test server with the product's default
# instead (isolated where this machine can), each test with its own UID block and
# its accounts removed afterwards; with one worker: `./scripts/test -n 1`.
ISOLATE_ALL = os.environ.get("FLOTILLA_TEST_ISOLATE") == "1"
ISOLATE_UIDS = 2_140_000_000  # its tests' UID blocks start here
if not ISOLATE_ALL:
    os.environ["FLOTILLA_RUN_AS_USER"] = "0"


@pytest.fixture(autouse=True)
def _test_uid_block(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """With FLOTILLA_TEST_ISOLATE=1: this test's UID block (FLOTILLA_UID_MIN/MAX, for
    `make_settings` and `flo server` subprocesses alike), its accounts removed after
    the test's other fixtures have stopped its servers."""
    if not ISOLATE_ALL:
        yield
        return
    if xdist_worker()[1] == 1:
        # An account a killed supervisor's useradd finished after an earlier test's
        # cleanup would make this test's `flo-admin` a conflict: the whole range is
        # this session's when it runs in one process.
        remove_test_accounts(ISOLATE_UIDS, ISOLATE_UIDS + 100 * 9_000)
    first, last = unused_uid_block(ISOLATE_UIDS, 100)
    monkeypatch.setenv("FLOTILLA_UID_MIN", str(first))
    monkeypatch.setenv("FLOTILLA_UID_MAX", str(last))
    yield
    remove_test_accounts(first, last, retry_for=5.0)


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
def readable_dir() -> Iterator[Path]:
    """A directory any user may read, for files a test hands its tasks (a git
    repository to clone, a marker to wait for): pytest's temporary root is 0700,
    which an isolated task's account cannot pass, as no real user's would."""
    path = Path(tempfile.mkdtemp(prefix="flotest-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
        "retry_backoff_seconds": 0.05,  # tests/test_retry_backoff.py waits a real one
        "agent_idle_exit_seconds": 60.0,
    }
    if ISOLATE_ALL:
        values["uid_min"] = int(os.environ["FLOTILLA_UID_MIN"])
        values["uid_max"] = int(os.environ["FLOTILLA_UID_MAX"])
    else:
        values["run_as_user"] = False  # why: ISOLATE_ALL above
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Api:
    """A running app and an authenticated client for it."""

    def __init__(
        self, client: httpx.AsyncClient, ctx: ServerContext, app: FastAPI | None = None
    ) -> None:
        self.client = client
        self.ctx = ctx
        self.app = app

    async def stop_loops(self) -> None:
        """Stop the reconcilers, for a test that steps them itself."""
        assert self.app is not None
        for loop in self.app.state.loops:
            await loop.stop()


async def open_api(settings: Settings, **kwargs: object) -> AsyncIterator[Api]:
    app = create_app(settings, **kwargs)  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://flotilla", headers=AUTH
        ) as client:
            yield Api(client, app.state.ctx, app)


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
