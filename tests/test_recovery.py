"""Work on simulated fleet nodes whose processes really run here: a 2-node
all-reduce (torch.distributed gloo, or a TCP rendezvous without torch), node
failure and spot interruption that requeue a run elsewhere with its checkpoint
directory intact, and many small tasks packed onto few nodes."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from flotilla.compute.provider import EventKind
from flotilla.compute.sim.provider import IbNetwork, SimConfig, SimProvider
from tests.conftest import Api, make_settings, open_api
from tests.factories import apply_and_start, get_run, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(90)

H100 = "h100-80gb-sxm-ib.8x"
ALLREDUCE = Path(__file__).resolve().parents[1] / "examples" / "allreduce.py"


@pytest.fixture
async def cloud() -> SimProvider:
    """Four H100 nodes in one InfiniBand partition; a spot notice an hour ahead."""
    config = SimConfig(
        networks=[IbNetwork("east-ib", "us-east1", H100, slices=4 * 8, partitions=1)],
        provisioning_delay=0.1,
        spot_notice=3600.0,
    )
    return SimProvider(config)


@pytest.fixture
async def api(data_dir: Path, cloud: SimProvider) -> AsyncIterator[Api]:
    settings = make_settings(data_dir, local_node=False)
    async for item in open_api(settings, providers={"sim": cloud}):
        yield item


@pytest.fixture
async def unisolated_api(data_dir: Path, cloud: SimProvider) -> AsyncIterator[Api]:
    """FLOTILLA_RUN_AS_USER=0: the all-reduce runs the test's own Python (its torch),
    from a virtualenv under /root that no task's account may enter."""
    settings = make_settings(data_dir, local_node=False, run_as_user=False)
    async for item in open_api(settings, providers={"sim": cloud}):
        yield item


async def fleet_of(api: Api, nodes: int, **spec: Any) -> list[str]:
    recipe = {
        "type": "fleet",
        "spec": {
            "name": "pool",
            "provider": "sim",
            "instance_type": H100,
            "region": "us-east1",
            "nodes": nodes,
            **spec,
        },
    }
    applied = await api.client.put("/api/recipes", json=recipe)
    assert applied.status_code == 201, applied.text

    async def ready() -> list[str] | None:
        listed = (await api.client.get("/api/nodes", params={"state": "ready"})).json()["nodes"]
        return [n["name"] for n in listed] if len(listed) == nodes else None

    names: list[str] = await wait_for(ready, what=f"{nodes} ready sim nodes")
    return names


async def log_of(api: Api, run_id: str, rank: int) -> str:
    response = await api.client.get(f"/api/runs/{run_id}/logs", params={"rank": rank})
    assert response.status_code == 200, response.text
    return response.text


@pytest.mark.slow
async def test_two_node_allreduce_on_sim_nodes(unisolated_api: Api) -> None:
    api = unisolated_api
    await fleet_of(api, 2, placement="cluster")
    command = f"{sys.executable} {ALLREDUCE}"
    spec = job("allreduce", command, scale=2, resources={"gpu": "H100:8"})
    _, run_id = await apply_and_start(api.client, spec)
    done = await wait_run(api.client, run_id, "succeeded", "failed", timeout=80)
    assert done["status"] == "succeeded", done
    assert len({t["node"] for t in done["tasks"]}) == 2  # one rank per node
    try:
        import torch  # noqa: F401

        how = "torch.distributed gloo"
    except ImportError:
        how = "tcp rendezvous"
    for rank in (0, 1):
        line = await log_of(api, run_id, rank)
        assert f"rank {rank}/2 on {done['tasks'][rank]['node']}: sum 3.0 via {how}" in line


CHECKPOINTED = (
    'echo "$FLOTILLA_NODE" >> "$FLOTILLA_CHECKPOINT_DIR/nodes"; '
    'if [ "$(wc -l < "$FLOTILLA_CHECKPOINT_DIR/nodes")" -ge 2 ]; then exit 0; fi; '
    "echo waiting; sleep 60"
)


async def started_on(api: Api, run_id: str) -> str:
    async def node() -> str | None:
        run = await get_run(api.client, run_id)
        return str(run["tasks"][0]["node"]) if run["status"] == "running" else None

    found: str = await wait_for(node, what="the run to start")
    return found


def current_tasks(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run view lists every attempt's tasks; these are the latest attempt's."""
    return [t for t in run["tasks"] if t["attempt"] == run["attempt"]]


def checkpoint_lines(api: Api, run_id: str) -> list[str]:
    path = api.ctx.settings.checkpoints / run_id / "nodes"
    return path.read_text().split()


async def test_node_failure_requeues_with_the_checkpoint_dir_intact(
    api: Api, cloud: SimProvider
) -> None:
    await fleet_of(api, 2)
    spec = job("resumable", CHECKPOINTED, resources={"gpu": "H100:8"})
    _, run_id = await apply_and_start(api.client, spec)
    first = await started_on(api, run_id)
    cloud.inject(first, EventKind.FAILED, api.ctx.clock.now(), "node failure (test)")
    done = await wait_run(api.client, run_id, "succeeded", "failed", timeout=60)
    assert done["status"] == "succeeded" and done["attempt"] == 1
    second = current_tasks(done)[0]["node"]
    assert second != first
    # The second attempt found what the first one saved.
    assert checkpoint_lines(api, run_id) == [first, second]
    messages = [
        e["message"] for e in (await api.client.get(f"/api/runs/{run_id}/events")).json()["events"]
    ]
    assert any(f"node {first} is" in m and "node failure (test)" in m for m in messages)


async def test_spot_notice_drains_requeues_and_finishes_elsewhere(
    api: Api, cloud: SimProvider
) -> None:
    await fleet_of(api, 2, spot=True)
    spec = job("spotty", CHECKPOINTED, resources={"gpu": "H100:8"}, use_spot_instance=True)
    _, run_id = await apply_and_start(api.client, spec)
    first = await started_on(api, run_id)
    cloud.interrupt_instance(first, api.ctx.clock.now())
    done = await wait_run(api.client, run_id, "succeeded", "failed", timeout=60)
    second = current_tasks(done)[0]["node"]
    assert done["status"] == "succeeded" and second != first
    assert checkpoint_lines(api, run_id) == [first, second]

    async def drained() -> dict[str, Any] | None:
        node = (await api.client.get(f"/api/nodes/{first}")).json()
        return node if node["state"] == "cordoned" else None

    node = await wait_for(drained, what="the noticed node to end drained")
    assert "spot interruption" in node["reason"]


async def test_small_tasks_pack_onto_two_nodes_each_with_its_own_gpu(api: Api) -> None:
    await fleet_of(api, 3)
    spec = job(
        "sweep",
        "echo $SATURN_JOB_RANK $CUDA_VISIBLE_DEVICES",
        scale=16,
        resources={"gpu": "H100:1"},
    )
    _, run_id = await apply_and_start(api.client, spec)
    done = await wait_run(api.client, run_id, "succeeded", "failed", timeout=60)
    assert done["status"] == "succeeded"
    by_node: dict[str, list[int]] = {}
    for task in done["tasks"]:
        by_node.setdefault(task["node"], []).extend(task["gpus"])
    assert len(by_node) == 2
    assert all(sorted(gpus) == list(range(8)) for gpus in by_node.values())
    assert (await log_of(api, run_id, 9)).strip() == f"9 {done['tasks'][9]['gpus'][0]}"
