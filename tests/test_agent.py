"""The node agent and supervisors: work survives the agent itself, stop semantics,
and the inventory of local GPUs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from flotilla.runtime.agent_client import agent_pid
from flotilla.runtime.inventory import gpu_type_from_name, parse_declared
from tests.conftest import Api
from tests.factories import apply_and_start, job, wait_for, wait_run


async def test_work_survives_the_agent_being_killed(
    sqlite_api: Api, data_dir: Path, readable_dir: Path
) -> None:
    client = sqlite_api.client
    marker = readable_dir / "go"  # where the task's account can see it
    command = f"echo started; while [ ! -e {marker} ]; do sleep 0.05; done; exit 4"
    _, run_id = await apply_and_start(client, job("survivor", command))
    run = await wait_run(client, run_id, "running")
    first_agent = agent_pid(data_dir)
    assert first_agent is not None
    os.kill(first_agent, signal.SIGKILL)
    marker.touch()  # the task ends while no agent is there to see it
    done = await wait_run(client, run_id, "failed", timeout=30)
    assert done["exit_code"] == 4
    assert done["tasks"][0]["pid"] == run["tasks"][0]["pid"]  # not restarted
    assert agent_pid(data_dir) not in (None, first_agent)  # a new agent took over
    assert (await client.get(f"/api/runs/{run_id}/logs")).text == "started\n"


async def test_stop_during_setup_and_missing_program(sqlite_api: Api, tmp_path: Path) -> None:
    client = sqlite_api.client
    slow_setup = job("slowsetup", "echo never", start_script="sleep 30")
    job_id, run_id = await apply_and_start(client, slow_setup)

    async def in_setup() -> bool:
        run = (await client.get(f"/api/runs/{run_id}")).json()
        return run["status"] == "starting" and run["tasks"][0]["status"] == "starting"

    await wait_for(in_setup, what="setup to begin")
    await client.post(f"/api/jobs/{job_id}/stop")
    stopped = await wait_run(client, run_id, "stopped", timeout=20)
    assert (await client.get(f"/api/runs/{run_id}/logs")).text == ""
    assert stopped["tasks"][0]["status"] == "stopped"

    _, missing = await apply_and_start(client, job("noprog", ["definitely-not-a-program-xyz"]))
    failed = await wait_run(client, missing, "failed")
    assert failed["exit_code"] == 127
    assert "not found" in (await client.get(f"/api/runs/{missing}/logs")).text


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA A100-SXM4-80GB", "A100"),
        ("NVIDIA H200", "H200"),
        ("Tesla V100-SXM2-16GB", "V100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA GeForce RTX 4090", "RTX4090"),
    ],
)
def test_gpu_names_become_types(name: str, kind: str) -> None:
    assert gpu_type_from_name(name) == kind


def test_declared_gpus() -> None:
    gpus = parse_declared("H100:2, a100:1")
    assert [(g.index, g.type) for g in gpus] == [(0, "H100"), (1, "H100"), (2, "A100")]
    with pytest.raises(ValueError, match="TYPE:COUNT"):
        parse_declared("H100")
