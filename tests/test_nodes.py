"""Nodes through the API: the view (GPUs and who holds them, topology, price, age),
the admin actions cordon / uncordon / drain / terminate, their events, and what
the scheduler does with the states (no new work on a cordoned node; a drained
node's work requeued)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flotilla.compute.provider import InstanceState
from flotilla.compute.sim.provider import SimProvider
from flotilla.core.status import NodeState
from flotilla.server.db.models import RecipeModel
from flotilla.server.services.fleets.nodes import node_from_instance, switch_node_state
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_user, apply_and_start, get_run, job, wait_for, wait_run

H100_TYPE = "h100-80gb-sxm-ib.8x"


@pytest.fixture
async def gpus_api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    """The app with two declared H100s, on each store."""
    async for item in open_api(make_settings(data_dir, database_url, local_gpus="H100:2")):
        yield item


async def add_sim_node(api: Api, fleet: str | None = None) -> str:
    """A ready node from the simulated cloud (8 H100s), optionally in a fleet
    recipe of that name; returns its name (the instance id)."""
    ctx = api.ctx
    now = ctx.clock.now()
    provider = ctx.providers["sim"]
    (instance,) = provider.create_instances(
        uuid.uuid4().hex, H100_TYPE, "us-east1", 1, False, False, now
    )
    async with ctx.transaction() as session:
        fleet_id = None
        if fleet:
            fleet_id = uuid.uuid4().hex
            spec = {
                "name": fleet,
                "provider": "sim",
                "instance_type": H100_TYPE,
                "region": "us-east1",
                "nodes": 1,
            }
            session.add(
                RecipeModel(
                    id=fleet_id,
                    type="fleet",
                    name=fleet,
                    owner="admin",
                    schema_version="2025.10.01",
                    spec=spec,
                    version=1,
                    run_counter=0,
                    schedule_enabled=False,
                    next_tick_at=None,
                    created_at=now,
                    updated_at=now,
                    deleted_at=None,
                )
            )
        node = node_from_instance(
            instance,
            provider="sim",
            fleet_id=fleet_id,
            request_id=uuid.uuid4().hex,
            address="10.0.0.7",
            now=now,
        )
        session.add(node)
        await session.flush()
        switch_node_state(session, node, NodeState.READY, reason="ready", actor="test", now=now)
    return instance.id


async def node(api: Api, name: str = "local") -> dict[str, Any]:
    response = await api.client.get(f"/api/nodes/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def act(api: Api, action: str, name: str = "local", **body: str) -> dict[str, Any]:
    response = await api.client.post(f"/api/nodes/{name}/{action}", json=body or None)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_local_node_is_listed_with_its_gpus(gpus_api: Api) -> None:
    listed = (await gpus_api.client.get("/api/nodes")).json()["nodes"]
    assert [n["name"] for n in listed] == ["local"]
    local = listed[0]
    assert local["provider"] == "local" and local["state"] == "ready"
    assert local["fleet"] is None and local["gpu_type"] == "H100"
    assert local["gpus"] == [
        {"index": 0, "type": "H100", "healthy": True, "holder": None},
        {"index": 1, "type": "H100", "healthy": True, "holder": None},
    ]
    assert local["gpu_counts"] == {"total": 2, "free": 2, "held": 0, "unhealthy": 0}
    assert local["labels"]["partition"] == "local" and local["age_seconds"] >= 0
    assert local["created_at"] and local["ready_at"]

    detail = await node(gpus_api)
    assert detail["gpus"] == local["gpus"]
    assert [e["message"] for e in detail["events"]] == ["local: registered"]

    by_type = await gpus_api.client.get("/api/nodes", params={"gpu_type": "h100"})
    assert [n["name"] for n in by_type.json()["nodes"]] == ["local"]
    other = await gpus_api.client.get("/api/nodes", params={"gpu_type": "A100"})
    assert other.json()["nodes"] == []
    assert (await gpus_api.client.get("/api/nodes", params={"state": "cordoned"})).json() == {
        "nodes": []
    }
    bad = await gpus_api.client.get("/api/nodes", params={"state": "asleep"})
    assert bad.status_code == 422 and bad.json()["error_code"] == "invalid_request"


async def test_a_running_jobs_gpu_shows_its_run_and_pod(gpu_api: Api) -> None:
    client = gpu_api.client
    job_id, run_id = await apply_and_start(
        client, job("holder", "sleep 60", resources={"gpu": "H100:1"})
    )
    run = await wait_run(client, run_id, "running")
    task = run["tasks"][0]
    local = await node(gpu_api)
    held = [g for g in local["gpus"] if g["holder"]]
    assert [g["index"] for g in held] == task["gpus"]
    assert held[0]["holder"] == {"run_id": run_id, "job": "holder", "task": task["name"]}
    assert local["gpu_counts"] == {"total": 2, "free": 1, "held": 1, "unhealthy": 0}
    listed = (await client.get("/api/nodes")).json()["nodes"][0]
    assert listed["gpus"] == local["gpus"]

    await client.post(f"/api/jobs/{job_id}/stop")
    await wait_run(client, run_id, "stopped")
    assert (await node(gpu_api))["gpu_counts"]["free"] == 2


async def test_cordon_keeps_new_work_pending_and_uncordon_starts_it(gpu_api: Api) -> None:
    client = gpu_api.client
    cordoned = await act(gpu_api, "cordon", reason="swapping a PSU")
    assert cordoned["state"] == "cordoned" and cordoned["reason"] == "swapping a PSU"

    job_id, run_id = await apply_and_start(
        client, job("waits", "sleep 60", resources={"gpu": "H100:1"})
    )

    async def looked_at() -> dict[str, Any] | None:
        # The scheduler replaces the "queued" reason once it has tried the run.
        run = await get_run(client, run_id)
        return run if run["status"] != "pending" or run["reason"] != "queued" else None

    run = await wait_for(looked_at, what="the scheduler to look at the run")
    assert run["status"] == "pending", run
    assert run["reason"]

    uncordoned = await act(gpu_api, "uncordon")
    assert uncordoned["state"] == "ready" and uncordoned["reason"] == "by admin"
    await wait_run(client, run_id, "running")
    await client.post(f"/api/jobs/{job_id}/stop")
    await wait_run(client, run_id, "stopped")


async def test_drain_stops_and_requeues_the_work_then_cordons(gpu_api: Api) -> None:
    client = gpu_api.client
    job_id, run_id = await apply_and_start(
        client, job("drained", "sleep 60", resources={"gpu": "H100:1"})
    )
    before = await wait_run(client, run_id, "running")

    draining = await act(gpu_api, "drain", reason="kernel upgrade")
    assert draining["state"] in ("draining", "cordoned")

    async def cordoned() -> dict[str, Any] | None:
        current = await node(gpu_api)
        return current if current["state"] == "cordoned" else None

    # The grace period is 2 s in tests; the node is cordoned once it holds nothing.
    after_node = await wait_for(cordoned, timeout=30, what="the drained node to be cordoned")
    assert after_node["gpu_counts"]["held"] == 0
    # The only node is cordoned, so the requeued run stays pending.
    requeued = await wait_run(client, run_id, "pending")
    assert requeued["id"] == run_id
    assert requeued["attempt"] == before["attempt"] + 1
    messages = [e["message"] for e in after_node["events"]]
    assert "local: ready -> draining: kernel upgrade" in messages
    assert any("draining -> cordoned" in m for m in messages)

    await client.post(f"/api/jobs/{job_id}/stop")
    await wait_run(client, run_id, "stopped")


async def test_actions_are_events_with_who_and_why(gpus_api: Api) -> None:
    bob = await add_user(gpus_api.ctx, "bob")
    refused = await gpus_api.client.post("/api/nodes/local/cordon", headers=bob)
    assert refused.status_code == 403 and "admin" in refused.json()["message"]
    alice = await add_user(gpus_api.ctx, "alice", admin=True, scopes=("read", "write", "admin"))
    response = await gpus_api.client.post(
        "/api/nodes/local/cordon", json={"reason": "bad fan"}, headers=alice
    )
    assert response.status_code == 200, response.text
    again = await gpus_api.client.post("/api/nodes/local/cordon", headers=alice)
    assert again.status_code == 200 and again.json()["reason"] == "bad fan"  # a no-op
    await act(gpus_api, "uncordon")

    events = [e for e in (await node(gpus_api))["events"] if e["message"] != "local: registered"]
    assert [(e["message"], e["actor"]) for e in events] == [
        ("local: ready -> cordoned: bad fan", "alice"),
        ("local: cordoned -> ready: by admin", "admin"),
    ]


async def test_unknown_node_is_404(gpus_api: Api) -> None:
    for method, path in [
        ("GET", "/api/nodes/nope"),
        ("POST", "/api/nodes/nope/cordon"),
        ("POST", "/api/nodes/nope/uncordon"),
        ("POST", "/api/nodes/nope/drain"),
        ("POST", "/api/nodes/nope/terminate"),
    ]:
        response = await gpus_api.client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["message"] == "node 'nope' not found"


async def test_illegal_transitions_are_409_naming_the_state(gpus_api: Api) -> None:
    client = gpus_api.client
    uncordon = await client.post("/api/nodes/local/uncordon")
    assert uncordon.status_code == 409
    assert uncordon.json() == {
        "error_code": "conflict",
        "message": "cannot uncordon node local: it is ready (needs cordoned or draining)",
    }
    terminate = await client.post("/api/nodes/local/terminate", json={"reason": "x"})
    assert terminate.status_code == 409
    assert terminate.json()["message"] == "the local node is this machine; cordon it instead"
    unknown_field = await client.post("/api/nodes/local/cordon", json={"why": "x"})
    assert unknown_field.status_code == 422
    local = await node(gpus_api)
    assert local["state"] == "ready" and len(local["events"]) == 1  # nothing changed


async def test_sim_node_in_a_fleet_filtered_and_terminated(gpus_api: Api) -> None:
    client = gpus_api.client
    name = await add_sim_node(gpus_api, fleet="pool")
    sim = await node(gpus_api, name)
    assert sim["provider"] == "sim" and sim["fleet"] == "pool"
    assert sim["instance_type"] == H100_TYPE and sim["region"] == "us-east1"
    assert sim["price_per_hour"] > 0 and sim["gpu_counts"]["free"] == 8
    assert {"region", "partition", "spine", "leaf", "nvlink"} <= set(sim["labels"])

    by_fleet = (await client.get("/api/nodes", params={"fleet": "pool"})).json()["nodes"]
    assert [n["name"] for n in by_fleet] == [name]
    assert (await client.get("/api/nodes", params={"fleet": "other"})).json()["nodes"] == []

    cordon = await act(gpus_api, "cordon", name)
    assert cordon["state"] == "cordoned"
    cordon_again = await client.post(f"/api/nodes/{name}/cordon")
    assert cordon_again.status_code == 200 and cordon_again.json()["state"] == "cordoned"

    terminated = await act(gpus_api, "terminate", name, reason="decommission")
    assert terminated["state"] == "terminated" and terminated["terminated_at"]
    provider = gpus_api.ctx.providers["sim"]
    assert isinstance(provider, SimProvider)
    assert provider.instances[name].state == InstanceState.TERMINATED
    assert (await act(gpus_api, "terminate", name))["reason"] == "decommission"  # a no-op

    # The fleet (nodes: 1) may already be replacing it; the terminated one is gone.
    live = (await client.get("/api/nodes")).json()["nodes"]
    assert "local" in [n["name"] for n in live] and name not in [n["name"] for n in live]
    gone = (await client.get("/api/nodes", params={"state": "terminated"})).json()["nodes"]
    assert [n["name"] for n in gone] == [name]
    drain = await client.post(f"/api/nodes/{name}/drain")
    assert drain.status_code == 409 and "it is terminated" in drain.json()["message"]
