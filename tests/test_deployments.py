"""Deployments: replicas of a small HTTP server behind their load balancer and the
front door; a killed replica replaced without a failed request (the client retries
once), rolling updates, authentication, scale from zero and autoscaling."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flotilla.recipes import parse_recipe_text
from flotilla.server.db.models import EventModel, RecipeModel, RunModel
from tests.conftest import Api, make_settings, open_api
from tests.factories import TASK_PYTHON, add_usage, add_user, process_gone, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SERVER = Path(__file__).resolve().parents[1] / "examples" / "http_replica.py"
EXAMPLE = SERVER.with_name("deployment.yaml")


def deployment(name: str = "web", **spec: Any) -> dict[str, Any]:
    return {
        "type": "deployment",
        "spec": {
            "name": name,
            "command": f"{TASK_PYTHON} {SERVER}",
            "algorithm": "round_robin",
            "health_check": {"interval": 0.2, "timeout": 0.5, "failure_count": 2},
            **spec,
        },
    }


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir, stop_grace_seconds=1.0)):
        yield item


async def view(api: Api, name: str = "web") -> dict[str, Any]:
    response = await api.client.get(f"/api/deployments/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def ready_replicas(api: Api, count: int, version: int | None = None) -> list[dict[str, Any]]:
    async def check() -> list[dict[str, Any]] | None:
        replicas = [r for r in (await view(api))["replicas"] if r["ready"] and not r["stopping"]]
        if version is not None:
            replicas = [r for r in replicas if r["version"] == version]
        return replicas if len(replicas) == count else None

    found: list[dict[str, Any]] = await wait_for(check, timeout=60, what=f"{count} ready replicas")
    return found


async def get(api: Api, path: str = "", **kwargs: Any) -> httpx.Response:
    return await api.client.get(f"/d/web/{path}", **kwargs)


async def direct(api: Api) -> httpx.AsyncClient:
    """A client for the deployment's load balancer port itself: unlike the front
    door, which holds a request until a replica is ready, it fails at once when
    nothing is routed, so it shows every gap in service."""
    port = (await view(api))["route_ports"]["8000"]
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)


async def ok_retrying_once(client: httpx.AsyncClient) -> bool:
    for _ in range(2):
        try:
            # A new connection each time: each one is routed afresh.
            if (await client.get("/", headers={"Connection": "close"})).status_code == 200:
                return True
        except httpx.TransportError:
            pass
    return False


async def replica_pid(api: Api, run_id: str) -> int:
    run = (await api.client.get(f"/api/runs/{run_id}")).json()
    return int(run["tasks"][0]["pid"])


async def test_replicas_serve_and_a_killed_one_is_replaced_without_failed_requests(
    api: Api,
) -> None:
    applied = await api.client.put("/api/recipes", json=deployment(scale=2))
    assert applied.status_code == 201, applied.text
    first = await ready_replicas(api, 2)
    responses = [await get(api) for _ in range(6)]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    answers = Counter(r.text.split()[2] for r in responses)
    assert len(answers) == 2, answers  # round robin over both replicas

    failures = 0
    stop = asyncio.Event()
    tcp = await direct(api)

    async def client() -> None:
        nonlocal failures
        while not stop.is_set():
            if not await ok_retrying_once(tcp):
                failures += 1
            await asyncio.sleep(0.02)

    load = asyncio.create_task(client())
    victim = first[0]["run_id"]
    os.kill(await replica_pid(api, victim), signal.SIGKILL)

    async def replaced() -> bool:
        replicas = await ready_replicas(api, 2)
        return victim not in {r["run_id"] for r in replicas}

    await wait_for(replaced, timeout=60, what="a replacement replica")
    stop.set()
    await load
    await tcp.aclose()
    assert failures == 0
    lb = (await view(api))["load_balancer"]
    assert lb["status"] == "serving" and len(lb["listeners"][0]["backends"]) == 2


async def test_a_replica_failing_its_health_check_is_replaced(api: Api) -> None:
    await api.client.put("/api/recipes", json=deployment())
    (first,) = await ready_replicas(api, 1)
    pid = await replica_pid(api, first["run_id"])
    assert (await get(api, "hang")).status_code == 200  # it stops listening, but runs on

    async def replaced() -> bool:
        replicas = await ready_replicas(api, 1)
        return replicas[0]["run_id"] != first["run_id"]

    await wait_for(replaced, timeout=60, what="the hung replica's replacement")
    events = (await api.client.get(f"/api/runs/{first['run_id']}/events")).json()["events"]
    assert any("failed its health check" in e["message"] for e in events), events
    assert (await get(api)).status_code == 200
    await wait_for(lambda: process_gone(pid), timeout=30, what="the hung replica to be stopped")


async def test_rolling_update_serves_throughout_and_ends_on_the_new_version(api: Api) -> None:
    await api.client.put("/api/recipes", json=deployment(scale=2))
    await ready_replicas(api, 2)
    failures = 0
    seen: list[str] = []
    stop = asyncio.Event()
    tcp = await direct(api)

    async def client() -> None:
        nonlocal failures
        while not stop.is_set():
            try:
                response = await tcp.get("/", headers={"Connection": "close"})
                seen.append(response.text.split()[-1])
            except httpx.TransportError:
                failures += 1
            await asyncio.sleep(0.02)

    load = asyncio.create_task(client())
    updated = deployment(scale=2, environment_variables={"VERSION": "2"})
    assert (await api.client.put("/api/recipes", json=updated)).status_code == 201
    await ready_replicas(api, 2, version=2)

    async def only_new() -> bool:
        replicas = (await view(api))["replicas"]
        return all(r["version"] == 2 for r in replicas)

    await wait_for(only_new, timeout=60, what="the old replicas to stop")
    await asyncio.sleep(0.3)
    stop.set()
    await load
    await tcp.aclose()
    assert failures == 0
    assert seen[0] == "v1" and seen[-1] == "v2"
    # Once the first v2 answer came, the old version was draining, not flapping.
    assert "v1" not in seen[len(seen) - 5 :]


async def test_a_leaving_replica_stays_until_its_connections_end(api: Api) -> None:
    """A rolling update takes the old replica out of the load balancer at once, but
    stops it only when the connections it serves there have ended."""
    await api.client.put("/api/recipes", json=deployment(scale=1))
    (old,) = await ready_replicas(api, 1)
    port = (await view(api))["route_ports"]["8000"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a request still on its way
    await writer.drain()
    updated = deployment(scale=1, environment_variables={"VERSION": "2"})
    assert (await api.client.put("/api/recipes", json=updated)).status_code == 201
    await ready_replicas(api, 1, version=2)
    await asyncio.sleep(2.5)  # past DRAIN_MIN, several reconciler steps
    run = (await api.client.get(f"/api/runs/{old['run_id']}")).json()
    assert run["status"] == "running", (run["stop_reason"], run["reason"])
    writer.write(b"\r\n")  # the request ends, and the old replica answers it
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.")
    writer.close()

    async def old_stopped() -> bool:
        found = (await api.client.get(f"/api/runs/{old['run_id']}")).json()
        return found["stop_reason"] == "replica no longer needed"

    await wait_for(old_stopped, timeout=30, what="the old replica to stop once drained")


async def test_front_door_needs_a_token_unless_the_route_is_public(api: Api) -> None:
    viewer = await add_user(api.ctx, "vera")
    stranger = await add_user(api.ctx, "sam")
    spec = deployment(viewers=[{"user": "vera"}])
    await api.client.put("/api/recipes", json=spec)
    await ready_replicas(api, 1)
    anonymous = await api.client.get("/d/web/", headers={"Authorization": ""})
    assert anonymous.status_code == 401
    assert (await get(api)).status_code == 200  # the owner's (admin's) token
    assert (await get(api, headers=viewer)).status_code == 200
    assert (await get(api, headers=stranger)).status_code == 404
    public = deployment("open", routes=[{"container_port": 8000, "visibility": "public"}])
    await api.client.put("/api/recipes", json=public)

    async def served() -> bool:
        response = await api.client.get("/d/open/", headers={"Authorization": ""})
        return response.status_code == 200

    await wait_for(served, timeout=60, what="the public deployment")


async def test_scale_from_zero_on_the_first_request_and_autoscale_up_and_down(api: Api) -> None:
    spec = deployment(
        replicas="0..3",
        autoscale={"target_connections": 1, "scale_up_delay": 0, "scale_down_delay": "2s"},
    )
    await api.client.put("/api/recipes", json=spec)
    await asyncio.sleep(1)
    assert (await view(api))["desired_replicas"] == 0
    assert (await view(api))["replicas"] == []
    first = await get(api)  # waits for a replica instead of failing
    assert first.status_code == 200 and first.text.startswith("hello")

    # Three slow requests at once: three concurrent connections, target one each.
    slow = [asyncio.create_task(get(api, "slow", params={"s": 4})) for _ in range(3)]

    async def grew() -> bool:
        return int((await view(api))["desired_replicas"]) >= 2

    await wait_for(grew, timeout=30, what="a scale-up")
    assert all(r.status_code == 200 for r in await asyncio.gather(*slow))

    async def shrank() -> bool:
        state = await view(api)
        return state["desired_replicas"] == 0 and not state["replicas"]

    await wait_for(shrank, timeout=60, what="a scale-down to zero")


async def test_a_replica_that_keeps_exiting_is_restarted_with_back_off(api: Api) -> None:
    await api.client.put("/api/recipes", json=deployment(command="exit 3"))

    async def runs() -> list[RunModel]:
        async with api.ctx.sessions() as session:
            query = (
                select(RunModel)
                .join(RecipeModel)
                .where(RecipeModel.name == "web")
                .order_by(RunModel.number)
            )
            return list((await session.execute(query)).scalars())

    async def restarted_thrice() -> bool:
        return (await view(api))["restarts"] >= 3

    await wait_for(restarted_thrice, timeout=30, what="three restarts")
    await asyncio.sleep(4)
    # Back-off of 1, 2, 4 … s: a few restarts in these seconds, not one per step.
    history = await runs()
    assert 4 <= len(history) <= 8
    assert all(r.exit_code == 3 for r in history if r.finished_at is not None)
    # The time from one replica's exit to its replacement grows: none for the first,
    # so under half the longest (a busy machine, tests in parallel, adds up to a
    # second or so to each gap, so no fixed bound holds for the first).
    gaps = [
        (later.queued_at - earlier.finished_at).total_seconds()
        for earlier, later in itertools.pairwise(history)
        if earlier.finished_at is not None
    ]
    assert gaps[0] < max(gaps) / 2 and max(gaps) >= 1.9, gaps


async def test_the_first_tcp_connection_to_a_deployment_at_zero_waits_for_a_replica(
    api: Api,
) -> None:
    spec = deployment(replicas="0..1", autoscale={"target_connections": 1})
    await api.client.put("/api/recipes", json=spec)

    async def state() -> dict[str, Any] | None:
        found = await view(api)
        return found if found["route_ports"] else None

    found = await wait_for(state, what="the deployment's load balancer port")
    assert found["desired_replicas"] == 0 and found["replicas"] == []
    port = found["route_ports"]["8000"]
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.get(f"http://127.0.0.1:{port}/")  # no front door: raw TCP
    assert response.status_code == 200 and response.text.startswith("hello")
    assert (await view(api))["desired_replicas"] == 1


async def test_a_request_waits_wait_for_replica_then_gets_503(api: Api) -> None:
    """A replica that never answers (a model that never finishes loading): the front
    door holds the request for `wait_for_replica`, then says why; the load balancer
    holds a raw connection as long."""
    await api.client.put("/api/recipes", json=deployment(command="sleep 60", wait_for_replica=1))

    async def routed() -> dict[str, Any] | None:  # before: "starting, try again"
        found = await view(api)
        return found if found["route_ports"] else None

    port = (await wait_for(routed, what="the deployment's load balancer port"))["route_ports"]
    response = await get(api)
    assert response.status_code == 503, response.text
    assert "no replica ready for 1 s (its `wait_for_replica`)" in response.json()["message"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port["8000"])
    writer.write(b"GET / HTTP/1.0\r\n\r\n")
    # Closed unanswered after the 1 s hold: far sooner than the 2 minute default.
    assert await asyncio.wait_for(reader.read(), 30) == b""
    writer.close()


async def test_the_readme_example_serves(api: Api) -> None:
    recipe = parse_recipe_text(EXAMPLE.read_text())
    applied = await api.client.put(
        "/api/recipes", json={"type": recipe.type, "spec": recipe.spec_dict()}
    )
    assert applied.status_code == 201, applied.text

    async def served() -> bool:
        response = await api.client.get("/d/hello-api/")
        return response.status_code == 200 and "Directory listing" in response.text

    await wait_for(served, timeout=60, what="the example deployment")


async def test_a_spent_budget_starts_no_replica_and_says_why(api: Api) -> None:
    assert (
        await api.client.put("/api/budgets/user/admin", json={"dollars_per_month": 1})
    ).status_code == 200
    now = api.ctx.clock.now()
    await add_usage(api.ctx, user="admin", started_at=now - timedelta(hours=1), ended_at=now)
    await api.client.put("/api/recipes", json=deployment())

    async def said_why() -> list[str] | None:
        async with api.ctx.sessions() as session:
            query = select(EventModel.message).where(EventModel.kind == "deployment")
            messages = list((await session.execute(query)).scalars())
        return messages or None

    (message,) = await wait_for(said_why, what="the refusal event")
    assert message.startswith("no new replica: user admin has used $")
    await asyncio.sleep(1)
    assert (await view(api))["replicas"] == []
