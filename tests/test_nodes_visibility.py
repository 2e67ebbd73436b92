"""What others see of a user's nodes: every node and which of its GPUs are taken,
but neither the fleet it belongs to nor the runs holding its GPUs, in the node list,
a node's detail (its reason included) and a filter by fleet name; the fleet's owner
and the admin see everything."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flotilla.compute.sim.provider import IbNetwork, SimConfig, SimProvider
from flotilla.server.db.models import NodeModel
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_user, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(60)

H100 = "h100-80gb-sxm-ib.8x"
FLEET = "alpha-private-fleet"
JOB = "alpha-secret-train"


@pytest.fixture
async def api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    """Fleet nodes only (no `local` node), from a small simulated cloud."""
    cloud = SimProvider(
        SimConfig(
            networks=[IbNetwork("east-ib", "us-east1", H100, slices=8 * 2, partitions=1)],
            provisioning_delay=0.2,
        )
    )
    settings = make_settings(data_dir, database_url, local_node=False)
    async for item in open_api(settings, providers={"sim": cloud}):
        yield item


async def nodes(client: httpx.AsyncClient, headers: httpx.Headers | None, **params: str) -> Any:
    response = await client.get("/api/nodes", headers=headers, params=params)
    assert response.status_code == 200, response.text
    return response


async def test_others_see_a_users_nodes_but_not_her_fleet_or_runs(api: Api) -> None:
    client = api.client
    alice = await add_user(api.ctx, "alice")
    bob = await add_user(api.ctx, "bob")
    spec = {"name": FLEET, "provider": "sim", "instance_type": H100, "region": "us-east1"}
    applied = await client.put(
        "/api/recipes", json={"type": "fleet", "spec": {**spec, "nodes": 1}}, headers=alice
    )
    assert applied.status_code == 201, applied.text
    fleet_id = applied.json()["state"]["id"]

    async def ready() -> Any:
        listed = (await nodes(client, alice)).json()["nodes"]
        return listed if [n["state"] for n in listed] == ["ready"] else None

    (node,) = await wait_for(ready, what="alice's fleet node")
    work = job(JOB, "sleep 60", resources={"gpu": "H100:1"})
    job_id = (await client.put("/api/recipes", json=work, headers=alice)).json()["state"]["id"]
    started = await client.post(f"/api/jobs/{job_id}/start", headers=alice)
    assert started.status_code == 200, started.text
    run_id = started.json()["run"]["id"]
    await wait_run(client, run_id, "running")
    async with api.ctx.transaction() as session:  # a reason the fleet reconciler writes
        row = (
            await session.execute(select(NodeModel).where(NodeModel.name == node["name"]))
        ).scalar_one()
        row.reason = f"scaling down: fleet {FLEET} changed"

    for who in (alice, None):  # the owner, and the admin (the client's own token)
        seen = (await nodes(client, who)).json()["nodes"][0]
        assert seen["fleet"] == FLEET and seen["fleet_id"] == fleet_id
        assert [g["holder"]["job"] for g in seen["gpus"] if g["holder"]] == [JOB]
        assert FLEET in seen["reason"]

    # Bob sees the node, that one GPU is taken, and nothing that names Alice's work.
    listed = await nodes(client, bob)
    detail = await client.get(f"/api/nodes/{node['name']}", headers=bob)
    assert detail.status_code == 200, detail.text
    for text in (listed.text, detail.text):
        for private in (FLEET, fleet_id, JOB, run_id, "alice"):
            assert private not in text, (private, text)
    (seen,) = listed.json()["nodes"]
    assert seen["name"] == node["name"] and seen["state"] == "ready"
    assert seen["fleet"] is None and seen["fleet_id"] is None
    assert seen["reason"] == "scaling down: its fleet changed"
    assert seen["gpu_counts"]["held"] == 1 and detail.json()["gpu_counts"]["held"] == 1
    assert detail.json()["events"] == []
    # Filtering by her fleet's name finds nothing, as for a fleet that does not exist.
    assert (await nodes(client, bob, fleet=FLEET)).json()["nodes"] == []
    assert len((await nodes(client, alice, fleet=FLEET)).json()["nodes"]) == 1

    await client.post(f"/api/jobs/{job_id}/stop", headers=alice)
