"""The scheduler in a running server: priority preemption with requeue, quotas
from the policy API, fair share between two users on a saturated node, pending
reasons in the queue API and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api
from tests.factories import (
    ADMIN_TOKEN,
    ServerProcess,
    apply_and_start,
    get_run,
    job,
    wait_for,
    wait_run,
)


def gated(gate_dir: Path, name: str) -> str:
    """A command that runs until the test creates its gate file (in a directory
    the task's account can see: `readable_dir`)."""
    return f"echo started; while [ ! -f {gate_dir}/{name} ]; do sleep 0.05; done"


async def events(api: Api, run_id: str) -> list[str]:
    body = (await api.client.get(f"/api/runs/{run_id}/events")).json()
    return [e["message"] for e in body["events"]]


async def test_higher_priority_preempts_and_the_victim_is_requeued(gpu_api: Api) -> None:
    client = gpu_api.client
    _, low = await apply_and_start(
        client, job("low", "sleep 60", resources={"gpu": "H100:2"}, priority=0)
    )
    await wait_run(client, low, "running")
    _, high = await apply_and_start(
        client, job("high", "echo urgent", resources={"gpu": "H100:2"}, priority=10)
    )
    await wait_run(client, high, "succeeded", timeout=30)
    # The victim went back to the queue as a new attempt and runs again.
    again = await wait_run(client, low, "running", timeout=30)
    assert again["attempt"] == 1
    messages = await events(gpu_api, low)
    assert any("preempted for run" in m and "-> preempted" in m for m in messages), messages
    assert any("preempted -> pending" in m for m in messages)
    # Equal priority never preempts by default.
    _, same = await apply_and_start(
        client, job("same", "echo same", resources={"gpu": "H100:1"}, priority=0)
    )
    await wait_for(lambda: _reason_has(client, same, "waiting for 1 H100 GPUs"), what="same waits")
    assert (await get_run(client, low))["status"] == "running"


async def test_user_quota_holds_runs_back_with_a_reason(gpu_api: Api, readable_dir: Path) -> None:
    client = gpu_api.client
    bad = await client.put("/api/scheduler/policy", json={"user_quota": {"admin": -1}})
    assert bad.status_code == 422 and "user_quota" in bad.text
    unknown = await client.put("/api/scheduler/policy", json={"user_quotas": {}})
    assert unknown.status_code == 422 and "user_quotas" in unknown.text
    policy = {"user_quota": {"admin": 1}, "project_quota": {"vision": 0}}
    assert (await client.put("/api/scheduler/policy", json=policy)).status_code == 200
    assert (await client.get("/api/scheduler/policy")).json()["user_quota"] == {"admin": 1}

    _, first = await apply_and_start(
        client, job("first", gated(readable_dir, "first"), resources={"gpu": "H100:1"})
    )
    await wait_run(client, first, "running")
    _, second = await apply_and_start(client, job("second", "true", resources={"gpu": "H100:1"}))
    quota = "user quota: admin holds 1 GPUs, this run needs 1, the limit is 1"
    await wait_for(lambda: _reason_has(client, second, quota), what="user quota reason")
    assert (await client.post("/api/projects", json={"name": "vision"})).status_code == 201
    _, vision = await apply_and_start(
        client, job("vis", "true", resources={"gpu": "H100:1"}, project="vision", owner="carol")
    )
    await wait_for(lambda: _reason_has(client, vision, "project quota: vision"), what="project")
    queue = (await client.get("/api/queue")).json()["runs"]
    assert [r["job"] for r in queue] == ["second", "vis"]
    assert queue[0]["reason"] == quota and queue[0]["position"] == 1

    # A new policy takes effect at once, while the first run still holds its GPU.
    policy["user_quota"] = {"admin": 2}
    assert (await client.put("/api/scheduler/policy", json=policy)).status_code == 200
    await wait_run(client, second, "succeeded", timeout=30)
    (readable_dir / "first").touch()


async def test_a_users_stop_wins_over_an_eviction(gpu_api: Api) -> None:
    client = gpu_api.client
    stubborn = "trap '' TERM; echo ready; sleep 60"  # outlives the 2 s grace period
    job_id, run_id = await apply_and_start(client, job("stubborn", stubborn))
    await wait_run(client, run_id, "running")
    await client.post(f"/api/jobs/{job_id}/stop")
    drained = await client.post("/api/nodes/local/drain", json={"reason": "maintenance"})
    assert drained.status_code == 200
    stopped = await wait_run(client, run_id, "stopped", "pending", timeout=30)
    assert stopped["status"] == "stopped" and stopped["attempt"] == 0
    assert (await client.post("/api/nodes/local/uncordon")).status_code == 200


async def test_fair_share_between_two_users_on_a_saturated_node(
    gpu_api: Api, readable_dir: Path
) -> None:
    client = gpu_api.client
    order: list[str] = []

    async def start(name: str, owner: str) -> str:
        spec = job(name, gated(readable_dir, name), resources={"gpu": "H100:1"}, owner=owner)
        return (await apply_and_start(client, spec))[1]

    a1, a2 = await start("a1", "alice"), await start("a2", "alice")
    await wait_run(client, a1, "running")
    await wait_run(client, a2, "running")
    # Alice queues two more first; Bob queues two after her. The node is full.
    runs = {
        name: await start(name, owner)
        for name, owner in [("a3", "alice"), ("a4", "alice"), ("b1", "bob"), ("b2", "bob")]
    }

    async def next_started() -> str | None:
        for name, run_id in runs.items():
            if name not in order and (await get_run(client, run_id))["status"] == "running":
                return name
        return None

    # Each freed GPU goes to whoever holds less (plus recent usage), not to the
    # oldest run: FIFO would give a3, a4, b1, b2. Here the two users end up
    # holding one GPU each at every step.
    for release in ("a1", "a2", "b1", "a3"):
        (readable_dir / release).touch()
        order.append(await wait_for(next_started, timeout=30, what="a start"))
    assert order == ["b1", "a3", "b2", "a4"]
    for name in ("b2", "a4"):
        (readable_dir / name).touch()


async def _reason_has(client: Any, run_id: str, text: str) -> bool:
    run = await get_run(client, run_id)
    return run["status"] == "pending" and text in run["reason"]


@pytest.mark.slow
def test_flo_queue_shows_pending_reasons(data_dir: Path, tmp_path: Path) -> None:
    server = ServerProcess(data_dir).start()
    try:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))},
            "FLOTILLA_URL": server.url,
            "FLOTILLA_TOKEN": ADMIN_TOKEN,
        }

        def flo(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["flo", *args], env=env, capture_output=True, text=True, timeout=60
            )

        recipe = tmp_path / "gpu.yaml"
        recipe.write_text(
            "type: job\nspec:\n  name: needs-gpu\n  command: 'true'\n  resources: {gpu: 'A100:8'}\n"
        )
        assert flo("apply", str(recipe), "--start").returncode == 0
        listed: list[dict[str, Any]] = []
        for _ in range(100):
            listed = json.loads(flo("queue", "--json").stdout)
            if listed and listed[0]["reason"].startswith("no capacity"):
                break
        assert listed[0]["job"] == "needs-gpu"
        assert "no ready on-demand A100 GPU node" in listed[0]["reason"]
        shown = flo("queue")
        assert shown.returncode == 0 and "needs-gpu#1" in shown.stdout
        assert "no capacity" in shown.stdout
        policy = tmp_path / "policy.yaml"
        policy.write_text("user_quota: {alice: 8}\nuser_weight: {alice: 2}\n")
        assert flo("policy", "--set", str(policy)).returncode == 0
        assert "alice: 8" in flo("policy").stdout
        policy.write_text("user_weight: {alice: 0}\n")
        refused = flo("policy", "--set", str(policy))
        assert refused.returncode == 1 and "user_weight" in refused.stderr
    finally:
        server.stop()
