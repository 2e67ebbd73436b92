"""Metering real runs on simulated fleet nodes (their processes run here): billed
per second, rounded up, at the sim catalog's price for the node (on demand or
spot), reports that add up to the runs' costs, and a budget that refuses new runs
while the running one carries on to the end."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flotilla.compute.sim.provider import IbNetwork, SimConfig, SimProvider
from flotilla.core.catalog import instance_type
from flotilla.core.metering import billed_seconds, cents
from flotilla.server.db.models import NodeModel, UsageModel
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_user, get_run, job, wait_for, wait_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

H100 = "h100-80gb-sxm-ib.8x"
ON_DEMAND = instance_type(H100).price_per_hour()  # $31.20 for 8 GPUs
SPOT = instance_type(H100).price_per_hour(spot=True)  # $12.80
RUNS = {"idle": "false"}  # reports of the runs alone, without the pool's idle time


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    cloud = SimProvider(
        SimConfig(
            networks=[IbNetwork("east-ib", "us-east1", H100, slices=4 * 8, partitions=1)],
            provisioning_delay=0.1,
        )
    )
    settings = make_settings(data_dir, local_node=False)
    async for item in open_api(settings, providers={"sim": cloud}):
        yield item


async def fleet(api: Api, name: str, nodes: int, spot: bool = False) -> None:
    recipe = {
        "type": "fleet",
        "spec": {
            "name": name,
            "provider": "sim",
            "instance_type": H100,
            "region": "us-east1",
            "nodes": nodes,
            "spot": spot,
        },
    }
    applied = await api.client.put("/api/recipes", json=recipe)
    assert applied.status_code == 201, applied.text

    async def ready() -> bool:
        listed = (await api.client.get("/api/nodes", params={"state": "ready"})).json()["nodes"]
        return sum(n["spot"] == spot for n in listed) >= nodes

    await wait_for(ready, what=f"{nodes} ready sim nodes (spot={spot})")


async def start(
    api: Api, recipe: dict[str, Any], headers: httpx.Headers | None = None
) -> httpx.Response:
    applied = await api.client.put("/api/recipes", json=recipe, headers=headers)
    assert applied.status_code in (200, 201), applied.text
    job_id = applied.json()["state"]["id"]
    return await api.client.post(f"/api/jobs/{job_id}/start", headers=headers)


async def run_job(api: Api, recipe: dict[str, Any], headers: httpx.Headers | None = None) -> str:
    started = await start(api, recipe, headers)
    assert started.status_code == 200, started.text
    return str(started.json()["run"]["id"])


async def metered(api: Api, run_id: str) -> dict[str, Any]:
    """The run's cost once every task's usage row is closed."""
    run = await wait_run(api.client, run_id, "succeeded", "failed", timeout=60)
    assert run["status"] == "succeeded", run

    async def closed() -> dict[str, Any] | None:
        cost: dict[str, Any] = (await api.client.get(f"/api/usage/runs/{run_id}")).json()
        tasks = cost["tasks"]
        done = len(tasks) == len(run["tasks"]) and all(t["ended_at"] for t in tasks)
        return cost if done else None

    result: dict[str, Any] = await wait_for(closed, what=f"usage of run {run_id} to close")
    return result


def expected(run: dict[str, Any], node_price: float) -> tuple[float, int, int]:
    """(unrounded cost, GPU-seconds, billed seconds of rank 0) from the times the
    run's tasks recorded, billed per second rounded up."""
    cost, gpu_seconds, first = 0.0, 0, 0
    for task in run["tasks"]:
        start = datetime.fromisoformat(task["started_at"])
        end = datetime.fromisoformat(task["finished_at"])
        seconds = billed_seconds(start, end)
        gpus = len(task["gpus"])
        cost += seconds * node_price * gpus / 8 / 3600
        gpu_seconds += seconds * gpus
        first = first or seconds
    return cost, gpu_seconds, first


async def test_a_run_is_billed_per_second_at_the_catalog_price(api: Api) -> None:
    await fleet(api, "pool", 1)
    run_id = await run_job(api, job("two-seconds", "sleep 2", resources={"gpu": "H100:8"}))
    cost = await metered(api, run_id)
    run = await get_run(api.client, run_id)
    dollars, gpu_seconds, billed = expected(run, ON_DEMAND)
    # `sleep 2` plus process start-up, rounded up to whole seconds.
    assert 2 <= billed <= 5, run["tasks"]
    [task] = cost["tasks"]
    assert task["billed_seconds"] == billed
    assert task["price_per_hour"] == ON_DEMAND == 31.2
    assert task["share"] == 1.0 and task["gpus"] == 8 and task["spot"] is False
    assert task["instance_type"] == H100 and task["gpu_type"] == "H100"
    assert cost["gpu_seconds"] == gpu_seconds == billed * 8
    assert cost["cost"] == cents(dollars) == cents(billed * 31.2 / 3600)
    assert cost["on_demand_cost"] == cost["cost"] and cost["spot_cost"] == 0

    report = (await api.client.get("/api/usage", params={"by": "resource", **RUNS})).json()
    assert report["rows"][0]["instance_type"] == H100
    assert report["total"]["cost"] == cents(dollars)
    assert report["total"]["gpu_seconds"] == gpu_seconds


async def test_a_spot_run_is_billed_at_the_spot_price(api: Api) -> None:
    await fleet(api, "spot-pool", 1, spot=True)
    spec = job("cheap", "sleep 2", resources={"gpu": "H100:4"}, use_spot_instance=True)
    run_id = await run_job(api, spec)
    cost = await metered(api, run_id)
    run = await get_run(api.client, run_id)
    dollars, gpu_seconds, billed = expected(run, SPOT)
    [task] = cost["tasks"]
    # Half the node at the spot price: $12.80 x 4/8.
    assert task["spot"] is True and task["share"] == 0.5
    assert task["price_per_hour"] == pytest.approx(SPOT / 2) and SPOT == 12.8
    assert cost["cost"] == cents(dollars) == cents(billed * 6.4 / 3600)
    assert cost["spot_cost"] == cost["cost"] and cost["on_demand_cost"] == 0
    assert cost["gpu_seconds"] == gpu_seconds == billed * 4


async def test_reports_add_up_to_the_runs_costs(api: Api) -> None:
    await fleet(api, "pool", 2)
    alice = await add_user(api.ctx, "alice", projects={"vision": "member"})
    bob = await add_user(api.ctx, "bob", projects={"nlp": "member"})
    runs = {
        "alice": [
            await run_job(
                api,
                job("pair", "sleep 1", scale=2, resources={"gpu": "H100:4"}, project="vision"),
                alice,
            ),
            await run_job(
                api, job("solo", "sleep 1", resources={"gpu": 1}, project="vision"), alice
            ),
        ],
        "bob": [
            await run_job(api, job("tok", "sleep 2", resources={"gpu": 2}, project="nlp"), bob)
        ],
    }
    cost: dict[str, float] = {}
    gpu_seconds = 0
    for user, ids in runs.items():
        cost[user] = 0.0
        for run_id in ids:
            run_cost = await metered(api, run_id)
            dollars, gpus, _ = expected(await get_run(api.client, run_id), ON_DEMAND)
            assert run_cost["cost"] == cents(dollars)
            cost[user] += dollars
            gpu_seconds += gpus
    total = cents(sum(cost.values()))

    by_user = (await api.client.get("/api/usage", params={"by": "user", **RUNS})).json()
    assert {r["user"]: r["cost"] for r in by_user["rows"]} == {u: cents(c) for u, c in cost.items()}
    assert {r["user"]: r["runs"] for r in by_user["rows"]} == {"alice": 2, "bob": 1}
    assert by_user["total"]["cost"] == total and by_user["total"]["gpu_seconds"] == gpu_seconds

    by_project = (await api.client.get("/api/usage", params={"by": "project", **RUNS})).json()
    assert {r["project"]: r["cost"] for r in by_project["rows"]} == {
        "vision": cents(cost["alice"]),
        "nlp": cents(cost["bob"]),
    }
    by_day = (await api.client.get("/api/usage", params={"by": "day", **RUNS})).json()
    assert by_day["total"] == by_user["total"] == by_project["total"]

    csv_params = {"by": "user,day", "format": "csv", **RUNS}
    csv_text = (await api.client.get("/api/usage", params=csv_params)).text
    header, *lines = csv_text.strip().splitlines()
    columns = header.split(",")
    cells = [dict(zip(columns, line.split(","), strict=True)) for line in lines]
    assert sum(float(c["gpu_seconds"]) for c in cells) == gpu_seconds
    assert sum(float(c["cost"]) for c in cells) == pytest.approx(total, abs=0.005 * len(cells))

    # Bob sees his own usage only.
    mine = (await api.client.get("/api/usage", params={"by": "user"}, headers=bob)).json()
    assert [r["user"] for r in mine["rows"]] == ["bob"]


async def test_a_reached_budget_refuses_new_runs_while_the_running_one_finishes(
    api: Api,
) -> None:
    await fleet(api, "pool", 2)
    alice = await add_user(api.ctx, "alice", projects={"vision": "member"})
    budget = await api.client.put("/api/budgets/project/vision", json={"dollars_per_month": 0.01})
    assert budget.status_code == 200, budget.text
    # 8 GPUs at $31.20/h spend a cent in under 1.2 s.
    long_run = await run_job(
        api, job("long", "sleep 5", resources={"gpu": "H100:8"}, project="vision"), alice
    )
    await wait_run(api.client, long_run, "running")

    async def exceeded() -> bool:
        status = (await api.client.get("/api/budgets/status", headers=alice)).json()
        return bool(status["budgets"][0]["state"] == "exceeded")

    await wait_for(exceeded, what="the open usage to reach the budget")
    refused = await start(api, job("next", "true", project="vision"), alice)
    assert refused.status_code == 403, refused.text
    message = refused.json()["message"]
    assert message.startswith("project vision has used $") and (
        "of its $0.01 monthly budget" in message
    )
    # A restart is a new run too: refused, and the running run is left alone.
    job_id = (await get_run(api.client, long_run))["job_id"]
    restart = await api.client.post(f"/api/jobs/{job_id}/restart", headers=alice)
    assert restart.status_code == 403
    assert (await get_run(api.client, long_run))["status"] == "running"
    metrics = (await api.client.get("/metrics")).text
    assert 'flotilla_running_gpus{project="vision",user="alice"} 8.0' in metrics
    assert 'flotilla_budget_usage_ratio{limit="dollars_per_month",scope_kind="project"' in metrics

    cost = await metered(api, long_run)  # it runs to the end
    assert cost["cost"] >= 0.04  # 5+ s at $0.00867/s


async def test_idle_fleet_nodes_are_billed_to_the_fleet_without_gap_or_overlap(api: Api) -> None:
    """A node costs from creation to termination, worked or not: the time no task
    holds it is billed to its fleet, so its rows tile its life exactly."""
    await fleet(api, "pool", 1)
    run_id = await run_job(api, job("short", "sleep 1", resources={"gpu": "H100:8"}))
    await metered(api, run_id)
    node_name = (await get_run(api.client, run_id))["tasks"][0]["node"]
    assert (await api.client.delete("/api/fleets/pool")).status_code == 204

    async def tiled() -> list[UsageModel] | None:
        async with api.ctx.sessions() as session:
            node = (
                await session.execute(select(NodeModel).where(NodeModel.name == node_name))
            ).scalar_one()
            rows = list(
                (
                    await session.execute(
                        select(UsageModel)
                        .where(UsageModel.node == node_name)
                        .order_by(UsageModel.started_at)
                    )
                ).scalars()
            )
        if node.terminated_at is None or any(r.ended_at is None for r in rows):
            return None
        assert rows[0].started_at == node.created_at
        assert rows[-1].ended_at == node.terminated_at
        return rows

    rows = await wait_for(tiled, 30, what="the node's rows to close")
    assert [r.user for r in rows] == ["idle:pool", "admin", "idle:pool"]
    for earlier, later in itertools.pairwise(rows):
        assert earlier.ended_at == later.started_at  # no gap, no overlap
    for idle in (rows[0], rows[2]):
        assert idle.recipe_type == "fleet" and idle.recipe_name == "pool"
        assert idle.owner == "admin" and idle.share == 1.0 and idle.gpus == 8
        assert idle.price_per_hour == ON_DEMAND and idle.run_id == ""

    report = (await api.client.get("/api/usage", params={"by": "user"})).json()
    by_user = {row["user"]: row["cost"] for row in report["rows"]}
    assert set(by_user) == {"admin", "idle:pool"}
    assert by_user["admin"] == (await api.client.get(f"/api/usage/runs/{run_id}")).json()["cost"]
