"""Idempotent starts: a start (or restart) sent with an `Idempotency-Key` creates at
most one run per caller and key, however often it is repeated, even at once; the
key cannot be reused on another request; another caller's same key is theirs;
keys are forgotten after a day."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from flotilla.client.api import FlotillaClient
from flotilla.client.connection import Connection
from flotilla.clock import FakeClock
from flotilla.server.db.models import IdempotencyKeyModel
from tests.conftest import Api, make_settings, open_api
from tests.factories import ADMIN_TOKEN, ServerProcess, add_user, job

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def keyed_api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    """The app on each store, on a clock the test moves."""
    async for item in open_api(make_settings(data_dir, database_url), clock=FakeClock()):
        yield item


async def _job(client: httpx.AsyncClient, name: str, **kwargs: Any) -> str:
    applied = await client.put("/api/recipes", json=job(name, "sleep 30", **kwargs))
    assert applied.status_code == 201, applied.text
    return str(applied.json()["state"]["id"])


async def _runs(client: httpx.AsyncClient, job_id: str) -> list[str]:
    listed = await client.get(f"/api/jobs/{job_id}/runs")
    return sorted(r["id"] for r in listed.json()["runs"])


async def _start(
    client: httpx.AsyncClient, job_id: str, key: str, route: str = "start", **kwargs: Any
) -> httpx.Response:
    headers = {"Idempotency-Key": key, **kwargs.pop("headers", {})}
    return await client.post(f"/api/jobs/{job_id}/{route}", headers=headers, **kwargs)


async def test_a_repeated_start_answers_with_the_first_run(keyed_api: Api) -> None:
    client = keyed_api.client
    job_id = await _job(client, "once")
    first = await _start(client, job_id, "start-1")
    assert first.status_code == 200, first.text
    again = await _start(client, job_id, "start-1")
    assert again.status_code == 200, again.text
    assert again.json() == first.json()
    assert await _runs(client, job_id) == [first.json()["run"]["id"]]
    # A new key is a new start; no key at all, as before, always starts.
    other = await _start(client, job_id, "start-2")
    plain = await client.post(f"/api/jobs/{job_id}/start")
    run_ids = {r.json()["run"]["id"] for r in (first, other, plain)}
    assert len(run_ids) == 3
    assert len(await _runs(client, job_id)) == 3
    # Restart is keyed alike.
    restarted = await _start(client, job_id, "restart-1", "restart")
    repeated = await _start(client, job_id, "restart-1", "restart")
    assert restarted.status_code == repeated.status_code == 200, repeated.text
    assert repeated.json()["run"]["id"] == restarted.json()["run"]["id"]
    assert len(await _runs(client, job_id)) == 4


async def test_concurrent_starts_with_one_key_create_one_run(keyed_api: Api) -> None:
    client = keyed_api.client
    job_id = await _job(client, "herd")
    answers = await asyncio.gather(*(_start(client, job_id, "same") for _ in range(8)))
    assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
    run_ids = {a.json()["run"]["id"] for a in answers}
    assert len(run_ids) == 1
    assert await _runs(client, job_id) == sorted(run_ids)


async def test_a_key_cannot_be_reused_on_another_request(keyed_api: Api) -> None:
    client = keyed_api.client
    job_id = await _job(client, "first")
    other_job = await _job(client, "second")
    assert (await _start(client, job_id, "k")).status_code == 200
    for refused in (
        await _start(client, other_job, "k"),  # another resource
        await _start(client, job_id, "k", "restart"),  # another route
        await _start(client, job_id, "k", params={"x": "1"}),  # other parameters
        await _start(client, job_id, "k", content=b'{"a": 1}'),  # another body
    ):
        assert refused.status_code == 422, refused.text
        assert refused.json()["error_code"] == "idempotency_key_reused"
        assert refused.json()["errors"][0]["field"] == "headers.Idempotency-Key"
    assert len(await _runs(client, job_id)) == 1
    assert await _runs(client, other_job) == []
    for bad in ("", "x" * 256, "caf\u00e9"):
        response = await client.post(
            f"/api/jobs/{job_id}/start", headers={"Idempotency-Key": bad.encode()}
        )
        assert response.status_code == 422, response.text
    assert len(await _runs(client, job_id)) == 1


async def test_keys_are_per_caller(keyed_api: Api) -> None:
    client = keyed_api.client
    alice = await add_user(keyed_api.ctx, "alice", projects={"vision": "member"})
    bob = await add_user(keyed_api.ctx, "bob", projects={"vision": "admin"})
    applied = await client.put(
        "/api/recipes", json=job("shared", "sleep 30", project="vision"), headers=alice
    )
    job_id = applied.json()["state"]["id"]
    hers = await _start(client, job_id, "k", headers=alice)
    his = await _start(client, job_id, "k", headers=bob)
    assert hers.status_code == his.status_code == 200, his.text
    assert hers.json()["run"]["id"] != his.json()["run"]["id"]
    # Each repeat gets the caller's own answer.
    assert (await _start(client, job_id, "k", headers=bob)).json() == his.json()
    assert (await _start(client, job_id, "k", headers=alice)).json() == hers.json()
    assert len(await _runs(client, job_id)) == 2


async def test_keys_expire_after_a_day(keyed_api: Api) -> None:
    client = keyed_api.client
    clock = keyed_api.ctx.clock
    assert isinstance(clock, FakeClock)
    job_id = await _job(client, "daily")
    first = (await _start(client, job_id, "k")).json()["run"]["id"]
    clock.advance(23 * 3600)
    assert (await _start(client, job_id, "k")).json()["run"]["id"] == first
    clock.advance(2 * 3600)
    assert (await _start(client, job_id, "other")).status_code == 200
    async with keyed_api.ctx.sessions() as session:  # the expired row was pruned
        keys = await session.scalar(select(func.count()).select_from(IdempotencyKeyModel))
    assert keys == 1
    again = (await _start(client, job_id, "k")).json()["run"]["id"]
    assert again != first
    assert len(await _runs(client, job_id)) == 3


class LosesFirstStartAnswer(httpx.BaseTransport):
    """Forwards requests to the server, but drops the answer to the first start, as
    a connection that breaks after the server has done the work."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.starts: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/start"):
            self.starts.append(request.headers.get("Idempotency-Key"))
            if len(self.starts) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("connection reset by peer", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.mark.slow
def test_the_client_retries_a_lost_start_with_its_key(data_dir: Path) -> None:
    server = ServerProcess(data_dir).start()
    try:
        transport = LosesFirstStartAnswer()
        connection = Connection(server.url, ADMIN_TOKEN, "test")
        with FlotillaClient(connection, transport=transport) as api:
            api.apply(job("flaky-net", "sleep 30"))
            run = api.start("flaky-net").run
            assert len(transport.starts) == 2 and transport.starts[0] == transport.starts[1]
            assert [r.id for r in api.runs("flaky-net")] == [run.id]
            api.stop("flaky-net")
    finally:
        server.stop()
