"""Fleets on a small simulated cloud, through the API with the reconcilers running:
fixed and elastic sizes, scale-up from zero for pending work and idle scale-down,
the InfiniBand slice check at apply, stock-outs, spares, failures and spot
notices, deletion, and request ids that survive a crash."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flotilla.clock import FakeClock
from flotilla.compute.provider import EventKind
from flotilla.compute.sim.provider import IbNetwork, SimConfig, SimProvider
from flotilla.core import autoscale
from flotilla.server.changes import Change
from tests.conftest import Api, make_settings, open_api
from tests.factories import apply_and_start, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(60)

H100 = "h100-80gb-sxm-ib.8x"


def small_cloud(**overrides: Any) -> SimProvider:
    """8 H100 nodes in us-east1, two InfiniBand partitions of 4; ready in 0.2 s."""
    config = SimConfig(
        networks=[IbNetwork("east-ib", "us-east1", H100, slices=8 * 8, partitions=2)],
        provisioning_delay=0.2,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return SimProvider(config)


def fleet(name: str = "gpus", **spec: Any) -> dict[str, Any]:
    base = {"name": name, "provider": "sim", "instance_type": H100, "region": "us-east1"}
    return {"type": "fleet", "spec": {**base, **spec}}


@pytest.fixture
async def cloud() -> SimProvider:
    return small_cloud()


@pytest.fixture
async def api(data_dir: Path, database_url: str | None, cloud: SimProvider) -> AsyncIterator[Api]:
    """Only fleet nodes: no `local` node to run work on."""
    settings = make_settings(data_dir, database_url, local_node=False)
    async for item in open_api(settings, providers={"sim": cloud}):
        yield item


async def get_fleet(api: Api, name: str = "gpus") -> dict[str, Any]:
    response = await api.client.get(f"/api/fleets/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_fleet(api: Api, check: Any, name: str = "gpus", what: str = "fleet") -> Any:
    async def probe() -> Any:
        view = await get_fleet(api, name)
        return view if check(view) else None

    return await wait_for(probe, 20, what=what)


def states(view: dict[str, Any]) -> list[str]:
    return sorted(m["state"] for m in view["members"])


async def test_fixed_fleet_provisions_its_nodes_once(api: Api, cloud: SimProvider) -> None:
    applied = await api.client.put("/api/recipes", json=fleet(nodes=2))
    assert applied.status_code == 201, applied.text
    fleet_id = applied.json()["state"]["id"]
    ready = await wait_fleet(api, lambda f: states(f) == ["ready", "ready"], what="2 ready")
    assert ready["desired"] == 2 and ready["size"] == 2 and ready["status"] == "ready"
    assert ready["price_per_hour"] == pytest.approx(2 * 31.2) and ready["reason"] == ""
    assert {m["instance_id"] for m in ready["members"]} <= set(cloud.instances)
    assert cloud.capacity(H100, "us-east1") == 6

    # Both came from one request, named after the fleet and its request counter.
    nodes = (await api.client.get("/api/nodes", params={"fleet": "gpus"})).json()["nodes"]
    assert len(nodes) == 2
    node = (await api.client.get(f"/api/nodes/{nodes[0]['name']}")).json()
    messages = [e["message"] for e in node["events"]]
    assert any(f"created by request {fleet_id}-1" in m for m in messages), messages
    assert any("provisioning -> ready" in m for m in messages), messages

    # Applying the same recipe again changes nothing; the fleet shows in recipes.
    again = await api.client.put("/api/recipes", json=fleet(nodes=2))
    assert again.json()["state"]["version"] == 1
    listed = (await api.client.get("/api/recipes", params={"type": "fleet"})).json()["recipes"]
    assert [(r["spec"]["name"], r["state"]["status"]) for r in listed] == [("gpus", "ready")]
    assert len((await api.client.get("/api/fleets")).json()["fleets"]) == 1
    assert cloud.capacity(H100, "us-east1") == 6


async def test_a_fleet_is_not_a_job(api: Api) -> None:
    fleet_id = (await api.client.put("/api/recipes", json=fleet(nodes=0))).json()["state"]["id"]
    started = await api.client.post(f"/api/jobs/{fleet_id}/start")
    assert started.status_code == 409
    assert "fleet gpus, not a job" in started.json()["message"]
    assert (await api.client.get("/api/fleets/nope")).status_code == 404


async def test_elastic_fleet_scales_up_for_pending_work_and_back_to_zero(
    api: Api, cloud: SimProvider
) -> None:
    await api.client.put("/api/recipes", json=fleet(nodes="0..2", idle_timeout="1s"))
    empty = await get_fleet(api)
    assert (empty["desired"], empty["size"], empty["status"]) == (0, 0, "empty")

    work = job("train", "sleep 1; echo trained", resources={"gpu": "H100:8"})
    _, run_id = await apply_and_start(api.client, work)
    up = await wait_fleet(api, lambda f: states(f) == ["ready"], what="a ready node")
    assert up["desired"] == 1 and cloud.capacity(H100, "us-east1") == 7
    node_name = up["members"][0]["name"]

    # The scheduler places the run on the new node, where it really runs.
    done = await wait_run(api.client, run_id, "succeeded", "failed", "error")
    assert done["status"] == "succeeded", done
    assert done["tasks"][0]["node"] == node_name

    # Idle for longer than idle_timeout: released, back to zero nodes.
    gone = await wait_fleet(api, lambda f: f["members"] == [], what="scale down to zero")
    assert gone["desired"] == 0 and gone["size"] == 0
    assert cloud.capacity(H100, "us-east1") == 8
    node = (await api.client.get(f"/api/nodes/{node_name}")).json()
    assert node["state"] == "terminated" and node["reason"].startswith("idle for ")


async def test_cluster_placement_fails_fast_without_a_partition_that_fits(api: Api) -> None:
    too_big = await api.client.put("/api/recipes", json=fleet(nodes=5, placement="cluster"))
    assert too_big.status_code == 409, too_big.text
    body = too_big.json()
    expected = (
        f"no InfiniBand partition in us-east1 has 40 free {H100} slices for 5 instances "
        "(largest: 32 slices)"
    )
    assert body["message"] == expected
    assert body["errors"] == [{"field": "spec.nodes", "message": expected}]
    assert (await api.client.get("/api/recipes/fleet/gpus")).status_code == 404  # not stored

    # An elastic cluster checks its minimum; four fit in one partition.
    fits = await api.client.put("/api/recipes", json=fleet(nodes="4..8", placement="cluster"))
    assert fits.status_code == 201, fits.text
    view = await wait_fleet(api, lambda f: states(f) == ["ready"] * 4, what="4 ready")
    partitions = set()
    for member in view["members"]:
        node = (await api.client.get(f"/api/nodes/{member['name']}")).json()
        partitions.add(node["labels"]["partition"])
    assert len(partitions) == 1


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"provider": "aws"}, "spec.provider", "unknown provider 'aws'"),
        ({"region": "mars-1"}, "spec.region", "unknown region 'mars-1'"),
        ({"instance_type": "h100-x"}, "spec", "unknown instance type"),
        ({"nodes": "3..1"}, "spec.nodes", "MIN <= MAX"),
    ],
)
async def test_apply_rejects_what_cannot_work(
    api: Api, spec: dict[str, Any], field: str, words: str
) -> None:
    response = await api.client.put("/api/recipes", json=fleet(**spec))
    assert response.status_code == 422, response.text
    problems = response.json()["errors"]
    assert problems[0]["field"] == field and words in problems[0]["message"], problems


async def test_stockout_makes_the_fleet_wait_then_it_provisions(data_dir: Path) -> None:
    clock = FakeClock()
    cloud = small_cloud(stockouts={(H100, "us-east1")})
    settings = make_settings(data_dir, local_node=False)
    async for api in open_api(settings, clock=clock, providers={"sim": cloud}):
        await api.client.put("/api/recipes", json=fleet(nodes=1))
        waiting = await wait_fleet(api, lambda f: f["reason"], what="a reason")
        assert waiting["status"] == "waiting" and waiting["size"] == 0
        assert f"{H100} is out of stock in us-east1" in waiting["reason"], waiting
        assert "retrying in 5m0s" in waiting["reason"]
        listed = (await api.client.get("/api/recipes/fleet/gpus")).json()["state"]
        assert listed["status"] == "waiting" and "out of stock" in listed["reason"]

        cloud.config.stockouts.clear()
        clock.advance(301)  # the provider's retry_after
        api.ctx.changes.announce(Change.FLEETS)
        await wait_fleet(api, lambda f: f["size"] == 1, what="a node after the stock-out")
        clock.advance(1)  # the provisioning delay, on the fake clock
        ready = await wait_fleet(api, lambda f: states(f) == ["ready"], what="ready")
        assert ready["reason"] == "" and ready["status"] == "ready"


async def test_nodes_that_fail_before_ready_are_replaced_with_back_off(data_dir: Path) -> None:
    """An instance type that cannot boot is not created (and billed) in a tight loop:
    10 s before the first replacement, 20 s before the second, and a node that
    becomes ready ends the back-off."""
    clock = FakeClock()
    cloud = small_cloud(provisioning_delay=5)
    settings = make_settings(data_dir, local_node=False)
    async for api in open_api(settings, clock=clock, providers={"sim": cloud}):
        await api.client.put("/api/recipes", json=fleet(nodes=1))

        await boot_failure(api, cloud, clock, 1, "10s")
        clock.advance(11)
        api.ctx.changes.announce(Change.FLEETS)
        await boot_failure(api, cloud, clock, 2, "20s")
        clock.advance(21)
        api.ctx.changes.announce(Change.FLEETS)
        await wait_fleet(api, lambda f: f["size"] == 1, what="a third node")
        clock.advance(6)  # it boots this time
        await wait_fleet(api, lambda f: states(f) == ["ready"], what="the third node ready")
        # A node that had been ready fails: replaced at once, and the count restarts.
        (ready,) = (await get_fleet(api))["members"]
        cloud.inject(ready["instance_id"], EventKind.FAILED, clock.now(), "disk died")
        await wait_fleet(
            api,
            lambda f, gone=ready["name"]: [m["name"] for m in f["members"]] not in ([], [gone]),
            what="an immediate replacement",
        )
        await boot_failure(api, cloud, clock, 1, "10s")


async def test_boot_failures_in_a_row_are_counted_across_a_restart(data_dir: Path) -> None:
    """The count and the wait are rows: a restarted server neither forgets the
    failures in a row (the second wait is 20 s, not 10 s again) nor replaces the
    node before the wait is over."""
    clock = FakeClock()
    cloud = small_cloud(provisioning_delay=5)
    settings = make_settings(data_dir, local_node=False)
    async for api in open_api(settings, clock=clock, providers={"sim": cloud}):
        await api.client.put("/api/recipes", json=fleet(nodes=1))
        await boot_failure(api, cloud, clock, 1, "10s")
    async for api in open_api(settings, clock=clock, providers={"sim": cloud}):
        await _quiet(api, 1.0)
        assert (await get_fleet(api))["members"] == []  # still waiting out the 10 s
        clock.advance(11)
        api.ctx.changes.announce(Change.FLEETS)
        await boot_failure(api, cloud, clock, 2, "20s")


async def boot_failure(
    api: Api, cloud: SimProvider, clock: FakeClock, count: int, wait: str
) -> None:
    """Fail the fleet's one node before it is ready; the fleet says it backs off, and
    with the clock standing still, no replacement comes."""
    (member,) = (await wait_fleet(api, lambda f: len(f["members"]) == 1))["members"]
    cloud.inject(member["instance_id"], EventKind.FAILED, clock.now(), "bad image")
    text = f"{count} node(s) in a row failed before becoming ready"
    view = await wait_fleet(api, lambda f: text in f["reason"] and not f["members"])
    assert f"next replacement in {wait}" in view["reason"]
    await _quiet(api, 1.0)
    assert (await get_fleet(api))["members"] == []


async def test_a_run_held_back_by_a_quota_grows_no_fleet(api: Api, cloud: SimProvider) -> None:
    """More nodes would not start it: they would stand idle, and billed."""
    policy = {"project_quota": {"vision": 0}}
    assert (await api.client.put("/api/scheduler/policy", json=policy)).status_code == 200
    assert (await api.client.post("/api/projects", json={"name": "vision"})).status_code == 201
    await api.client.put("/api/recipes", json=fleet(nodes="0..2"))
    work = job("held", "true", resources={"gpu": "H100:8"}, project="vision")
    _, run_id = await apply_and_start(api.client, work)

    async def held() -> bool:
        run = (await api.client.get(f"/api/runs/{run_id}")).json()
        return str(run["reason"]).startswith("project quota: vision holds 0 GPUs")

    await wait_for(held, what="the quota's reason")
    api.ctx.changes.announce(Change.FLEETS)
    await _quiet(api, 1.0)
    view = await get_fleet(api)
    assert (view["desired"], view["members"]) == (0, [])
    # Quota lifted: now the fleet grows for it, and it runs.
    assert (await api.client.put("/api/scheduler/policy", json={})).status_code == 200
    done = await wait_run(api.client, run_id, "succeeded", "failed", "error", timeout=30)
    assert done["status"] == "succeeded", done


async def test_spares_stay_up_idle(api: Api, cloud: SimProvider) -> None:
    await api.client.put("/api/recipes", json=fleet(nodes="0..4", spares=2, idle_timeout="1s"))
    view = await wait_fleet(api, lambda f: states(f) == ["ready", "ready"], what="2 spares")
    assert view["desired"] == 2 and view["busy"] == 0
    await _quiet(api, 1.5)  # longer than idle_timeout: spares are not excess
    assert states(await get_fleet(api)) == ["ready", "ready"]


async def test_deleting_a_fleet_terminates_its_nodes(api: Api, cloud: SimProvider) -> None:
    await api.client.put("/api/recipes", json=fleet(nodes=2))
    view = await wait_fleet(api, lambda f: f["size"] == 2, what="2 nodes")
    names = [m["name"] for m in view["members"]]
    assert (await api.client.delete("/api/fleets/gpus")).status_code == 204
    assert (await api.client.get("/api/fleets/gpus")).status_code == 404

    async def all_terminated() -> bool:
        nodes = [(await api.client.get(f"/api/nodes/{n}")).json() for n in names]
        return all(n["state"] == "terminated" for n in nodes)

    await wait_for(all_terminated, 20, what="nodes terminated")
    assert cloud.capacity(H100, "us-east1") == 8
    assert all(i.state == "terminated" for i in cloud.instances.values())


async def test_failures_and_spot_notices_reach_the_nodes(api: Api, cloud: SimProvider) -> None:
    await api.client.put("/api/recipes", json=fleet(nodes=1, spot=True))
    first = (await wait_fleet(api, lambda f: states(f) == ["ready"]))["members"][0]
    assert first["price_per_hour"] == 12.8
    now = api.ctx.clock.now()

    cloud.inject(first["instance_id"], EventKind.GPU_FAILED, now, "gpu 3 failed", gpu=3)

    async def gpu_marked() -> bool:
        node = (await api.client.get(f"/api/nodes/{first['name']}")).json()
        return any(g["index"] == 3 and not g["healthy"] for g in node["gpus"])

    await wait_for(gpu_marked, 20, what="GPU 3 unhealthy")

    deadline = now + timedelta(days=7)
    cloud.inject(
        first["instance_id"], EventKind.INTERRUPTION_NOTICE, now, "reclaimed", deadline=deadline
    )
    # The noticed node leaves the count, so a replacement comes up before it goes.
    view = await wait_fleet(api, lambda f: f["size"] == 1 and len(f["members"]) == 2)
    noticed = next(m for m in view["members"] if m["name"] == first["name"])
    assert "spot interruption notice: instance reclaimed at " in noticed["reason"]
    assert noticed["interruption_deadline"] == deadline.isoformat()

    cloud.inject(first["instance_id"], EventKind.TERMINATED, now, "spot interruption")
    replacement = await wait_fleet(api, lambda f: len(f["members"]) == 1)
    second = replacement["members"][0]
    assert second["name"] != first["name"]

    await wait_fleet(api, lambda f: states(f) == ["ready"])
    cloud.inject(second["instance_id"], EventKind.FAILED, api.ctx.clock.now(), "disk died")
    third = await wait_fleet(
        api, lambda f: len(f["members"]) == 1 and f["members"][0]["name"] != second["name"]
    )
    assert third["size"] == 1
    node = (await api.client.get(f"/api/nodes/{second['name']}")).json()
    assert node["state"] == "terminated" and "replacing failed node (disk died)" in node["reason"]


async def test_a_request_retried_after_a_crash_provisions_nothing_twice(
    api: Api, cloud: SimProvider
) -> None:
    applied = await api.client.put("/api/recipes", json=fleet(nodes=0))
    fleet_id = applied.json()["state"]["id"]
    # A previous server sent the fleet's first request and died before recording it.
    lost = cloud.create_instances(
        f"{fleet_id}-1", H100, "us-east1", 2, False, False, api.ctx.clock.now()
    )
    await api.client.put("/api/recipes", json=fleet(nodes=2))
    view = await wait_fleet(api, lambda f: f["size"] == 2, what="2 nodes")
    assert {m["instance_id"] for m in view["members"]} == {i.id for i in lost}
    assert cloud.capacity(H100, "us-east1") == 6
    await _quiet(api, 0.5)
    assert (await get_fleet(api))["size"] == 2 and len(cloud.instances) == 2


async def _quiet(api: Api, seconds: float) -> None:
    """Let the reconcilers run a few times (resync is 0.3 s in tests): what must not
    happen has had its chance to."""
    await asyncio.sleep(seconds)


# -- sizing, pure ------------------------------------------------------------------

ON_DEMAND = autoscale.FleetShape("a", "a", 0, 4, 0, "H100", 8, False, 31.2)
SPOT = autoscale.FleetShape("b", "b", 0, 4, 0, "H100", 8, True, 12.8)
CHEAP = autoscale.FleetShape("c", "c", 0, 1, 0, "H100", 8, False, 20.0)


def demand(run: str, gpus: int = 8, tasks: int = 1, spot: bool = False) -> autoscale.Demand:
    return autoscale.Demand(run, "H100", gpus, tasks, spot)


def test_demand_goes_to_the_cheapest_fleet_that_serves_it() -> None:
    wanted = autoscale.assign_demand(
        [ON_DEMAND, SPOT, CHEAP],
        {},
        [demand("r1"), demand("r2", tasks=2), demand("r3", spot=True), demand("r4", gpus=1)],
    )
    # r1 fills the cheap one-node fleet; r2 (2 nodes) and r4 (1 GPU: one node) go on
    # demand; spot work only to the spot fleet.
    assert wanted == {"a": 3, "b": 1, "c": 1}
    assert autoscale.nodes_needed(ON_DEMAND, demand("x", gpus=16)) is None
    assert autoscale.nodes_needed(ON_DEMAND, demand("x", tasks=5)) is None  # over MAX
    assert autoscale.nodes_needed(ON_DEMAND, demand("x", gpus=1, tasks=16)) == 2
    assert autoscale.nodes_needed(ON_DEMAND, autoscale.Demand("x", "A100", 8, 1, False)) is None
    assert autoscale.desired_size(ON_DEMAND, busy=1, wanted=9) == 4
    fixed = autoscale.FleetShape("f", "f", 3, 3, 0, "H100", 8, False, 31.2)
    assert autoscale.desired_size(fixed, busy=0, wanted=0) == 3


def test_scale_down_takes_idle_nodes_only_after_the_timeout() -> None:
    clock = FakeClock()
    now = clock.now()
    long_ago = now - timedelta(minutes=11)
    members = [
        autoscale.Member("busy", True, True, None, True),
        autoscale.Member("old", True, False, long_ago, True),
        autoscale.Member("new", True, False, now - timedelta(seconds=5), True),
        autoscale.Member("cordoned", False, False, long_ago, True),
    ]
    assert autoscale.scale_down(ON_DEMAND, members, 1, 600, now) == [("old", "idle for 11m0s")]
    assert autoscale.scale_down(ON_DEMAND, members, 4, 600, now) == []
    small = autoscale.FleetShape("a", "a", 0, 2, 0, "H100", 8, False, 31.2)
    over = autoscale.scale_down(small, members, 2, 600, now)  # above MAX: at once
    assert [m for m, _ in over] == ["old", "new"]
    assert autoscale.format_seconds(3723) == "1h2m3s"
