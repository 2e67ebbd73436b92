"""The server under trouble: a database that cannot write (a full disk, a read-only
database) still answers reads, and writes answer 503 `storage_unavailable`; dropped
PostgreSQL connections are replaced without failing requests; request bodies over
the limit answer 413 before they are held in memory."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import Connection, event, text
from sqlalchemy.exc import DBAPIError
from starlette.types import Receive, Scope, Send

from flotilla.server.auth.token_checks import TokenChecks
from flotilla.server.db.engine import create_engine
from flotilla.server.reconnect import RetryDroppedConnection, is_conflict, is_dropped_connection
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_user, apply_and_start, cleanup_data_dir, job

pytestmark = pytest.mark.timeout(60)

# Reads a user makes; each must keep working while the database refuses writes.
READS = ["/api/user", "/api/recipes", "/api/jobs", "/api/nodes", "/api/fleets", "/api/tokens"]


async def assert_reads_work_and_writes_answer_503(api: Api, user: httpx.Headers) -> None:
    for path in READS:
        for headers in (user, None):  # a token never used yet, and the admin's
            response = await api.client.get(path, headers=headers)
            assert response.status_code == 200, (path, response.text)
    refused = await api.client.put("/api/recipes", json=job("new-one"), headers=user)
    assert refused.status_code == 503, refused.text
    assert refused.json()["error_code"] == "storage_unavailable"
    assert "try again later" in refused.json()["message"]
    assert refused.headers["retry-after"]


@pytest.fixture
async def sqlite_api(data_dir: Path) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir)):
        yield item


async def test_a_read_only_database_still_answers_reads(sqlite_api: Api) -> None:
    api = sqlite_api
    alice = await add_user(api.ctx, "alice")
    assert (await api.client.put("/api/recipes", json=job(), headers=alice)).status_code == 201
    # The server's one SQLite connection now refuses every write (SQLITE_READONLY).
    async with api.ctx.engine.connect() as conn:
        await conn.exec_driver_sql("PRAGMA query_only = ON")
    try:
        await assert_reads_work_and_writes_answer_503(api, alice)
    finally:
        async with api.ctx.engine.connect() as conn:
            await conn.exec_driver_sql("PRAGMA query_only = OFF")
    applied = await api.client.put("/api/recipes", json=job("new-one"), headers=alice)
    assert applied.status_code == 201, applied.text


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB filesystem of its own (tmpfs), unmounted afterwards; root only."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small filesystem needs root")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        cleanup_data_dir(mountpoint / "data")
        if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mountpoint)], check=True)


@pytest.fixture
async def small_disk_api(small_disk: Path) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(small_disk / "data")):
        yield item


def fill(path: Path) -> None:
    """Write `path` until the filesystem has no byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            while True:
                try:
                    if os.write(fd, b"\0" * size) < size:
                        break
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)


async def test_a_full_disk_still_answers_reads(small_disk: Path, small_disk_api: Api) -> None:
    api = small_disk_api
    alice = await add_user(api.ctx, "alice")
    await apply_and_start(api.client, job(command="true"))
    # Empty the write-ahead log, so that the next write must grow a file.
    async with api.ctx.engine.connect() as conn:
        await conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    filler = small_disk / "filler"
    fill(filler)
    try:
        await assert_reads_work_and_writes_answer_503(api, alice)
    finally:
        filler.unlink()
    applied = await api.client.put("/api/recipes", json=job("new-one"), headers=alice)
    assert applied.status_code == 201, applied.text


@pytest.fixture
async def pg_api(data_dir: Path, postgres_url: str) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir, postgres_url)):
        yield item


async def drop_server_connections(database_url: str) -> int:
    """Terminate every PostgreSQL backend serving the test database (the server's)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()
    return len(rows)


async def test_dropped_postgres_connections_fail_no_request(pg_api: Api, postgres_url: str) -> None:
    client = pg_api.client
    job_id, _ = await apply_and_start(client, job(command="true"))
    for _ in range(5):
        assert await drop_server_connections(postgres_url) > 0
        for path in ("/api/recipes", "/api/jobs", f"/api/jobs/{job_id}"):
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
        assert await drop_server_connections(postgres_url) > 0
        started = await client.post(f"/api/jobs/{job_id}/start")
        assert started.status_code == 200, started.text


class DropMidRequest:
    """Terminates the server's PostgreSQL connection for real just as a request runs
    its next statement (armed with `arm`): the one that looks up the caller's token,
    which no reconciler runs (arming forgets the token checks the server keeps for
    a few seconds, so that the request does look it up). The connection dies while
    the request is using it."""

    def __init__(self, api: Api, database_url: str) -> None:
        assert api.app is not None
        self.app = api.app
        self.engine = api.ctx.engine.sync_engine
        self.database_url = database_url
        self.armed = 0
        event.listen(self.engine, "before_cursor_execute", self._before)

    def arm(self, times: int = 1) -> None:
        self.app.state.token_checks = TokenChecks()
        self.armed = times

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)

    def _before(self, conn: Connection, _cursor: object, statement: str, *_: object) -> None:
        if self.armed <= 0 or "FROM api_tokens" not in statement:
            return
        self.armed -= 1
        driver = conn.connection.driver_connection
        assert isinstance(driver, asyncpg.Connection)
        pid = driver.get_server_pid()
        # From another thread with its own loop: this hook runs inside the server's.
        worker = threading.Thread(target=asyncio.run, args=(self._terminate(pid),))
        worker.start()
        worker.join()

    async def _terminate(self, pid: int) -> None:
        conn = await asyncpg.connect(self.database_url)
        try:  # waits until the backend has exited (PostgreSQL 14+)
            assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
        finally:
            await conn.close()


async def test_a_connection_dropped_mid_request_fails_no_read(
    pg_api: Api, postgres_url: str
) -> None:
    client = pg_api.client
    job_id, _ = await apply_and_start(client, job(command="true"))
    drop = DropMidRequest(pg_api, postgres_url)
    try:
        for path in ("/api/recipes", f"/api/jobs/{job_id}", "/api/nodes"):
            drop.arm()
            response = await client.get(path)
            assert response.status_code == 200, (path, response.text)
            assert drop.armed == 0
        # A write is not run twice (its COMMIT may have happened): 503, try again.
        drop.arm()
        started = await client.post(f"/api/jobs/{job_id}/start")
        assert started.status_code == 503, started.text
        assert started.json()["error_code"] == "database_unavailable"
        assert started.headers["retry-after"] == "1"
        # A read that loses its connection twice answers the same.
        drop.arm(2)
        twice = await client.get("/api/recipes")
        assert twice.status_code == 503 and twice.json()["error_code"] == "database_unavailable"
    finally:
        drop.close()
    assert (await client.post(f"/api/jobs/{job_id}/start")).status_code == 200


LIMIT = 64 * 1024
FRONTDOOR_LIMIT = 256 * 1024


@pytest.fixture
async def limited_api(data_dir: Path) -> AsyncIterator[Api]:
    settings = make_settings(data_dir, max_request_bytes=LIMIT, max_frontdoor_bytes=FRONTDOOR_LIMIT)
    async for item in open_api(settings):
        yield item


def recipe_body(size: int) -> bytes:
    """A job recipe of about `size` bytes (its description pads it)."""
    base = f'{{"type": "job", "spec": {{"name": "big-{uuid.uuid4().hex[:6]}",'
    base += ' "command": "true", "description": "'
    return (base + "x" * max(0, size - len(base) - 4) + '"}}').encode()


async def chunked(body: bytes, chunk: int = 8192) -> AsyncIterator[bytes]:
    for start in range(0, len(body), chunk):
        yield body[start : start + chunk]


def assert_too_large(response: httpx.Response) -> None:
    assert response.status_code == 413, response.text
    assert response.json()["error_code"] == "request_too_large"
    assert "FLOTILLA_MAX_" in response.json()["message"]


async def test_request_bodies_over_the_limit_answer_413(limited_api: Api) -> None:
    client = limited_api.client
    json_type = {"content-type": "application/json"}
    # Bodies within the limit work, declared or chunked (a recipe description may
    # be 2 KiB; these are all valid recipes whatever their size, refused only by it).
    small = await client.put("/api/recipes", content=recipe_body(1500), headers=json_type)
    assert small.status_code == 201, small.text
    streamed = await client.put(
        "/api/recipes", content=chunked(recipe_body(1500), 100), headers=json_type
    )
    assert streamed.status_code == 201, streamed.text
    assert "content-length" not in streamed.request.headers

    declared = await client.put("/api/recipes", content=b"x" * (LIMIT + 1), headers=json_type)
    assert_too_large(declared)
    over = await client.put("/api/recipes", content=chunked(b"x" * (LIMIT * 4)), headers=json_type)
    assert_too_large(over)
    assert over.headers["connection"] == "close"
    secret = await client.post(
        "/api/secrets", json={"name": "key", "value": "k" * LIMIT}, headers=json_type
    )
    assert_too_large(secret)

    # The front door has its own limit, for uploads to deployments.
    upload = await client.post("/d/no-such-app/upload", content=b"x" * (LIMIT * 2))
    assert upload.status_code in (401, 404), upload.text  # read whole, then refused
    assert_too_large(
        await client.post("/d/no-such-app/upload", content=b"x" * (FRONTDOOR_LIMIT + 1))
    )


async def _a_real_deadlock(database_url: str) -> DBAPIError:
    """The error PostgreSQL gives the transaction it undoes to break a deadlock:
    two transactions lock two rows in opposite orders."""
    engine = create_engine(database_url)
    try:
        async with engine.begin() as setup:
            await setup.execute(text("CREATE TABLE probe (id integer PRIMARY KEY)"))
            await setup.execute(text("INSERT INTO probe VALUES (1), (2)"))
        lock = "UPDATE probe SET id = id WHERE id = :id"
        async with engine.connect() as first, engine.connect() as second:
            await first.begin()
            await second.begin()
            await first.execute(text(lock), {"id": 1})
            await second.execute(text(lock), {"id": 2})
            crossed = await asyncio.gather(
                first.execute(text(lock), {"id": 2}),
                second.execute(text(lock), {"id": 1}),
                return_exceptions=True,
            )
        errors = [e for e in crossed if isinstance(e, DBAPIError)]
        assert len(errors) == 1, crossed
        return errors[0]
    finally:
        await engine.dispose()


async def test_a_request_undone_by_a_deadlock_answers_try_again(postgres_url: str) -> None:
    """A read undone to break a deadlock is run again; a write answers 503
    `database_conflict` with Retry-After (it was rolled back whole), not a 500."""
    deadlock = await _a_real_deadlock(postgres_url)
    assert is_conflict(deadlock) and not is_dropped_connection(deadlock)
    calls: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append(scope["method"])
        if len(calls) == 1 or scope["method"] == "POST":
            raise deadlock
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    transport = httpx.ASGITransport(app=RetryDroppedConnection(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        read = await client.get("/api/runs")
        assert (read.status_code, read.text, calls) == (200, "ok", ["GET", "GET"])
        write = await client.post("/api/jobs/j/start")
    assert write.status_code == 503, write.text
    assert write.json()["error_code"] == "database_conflict"
    assert write.headers["retry-after"] == "1"
    assert calls == ["GET", "GET", "POST"]  # a write is not run again
