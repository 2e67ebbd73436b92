"""Several processes per task (`nprocs`): each process's indices and GPU share, the
recipe check that the GPUs split evenly, and real supervisors running the processes
as a gang (one fails → all end; a stop reaches all)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flotilla.core.envcontract import TaskIdentity, process_environments, task_environment
from flotilla.errors import InvalidRecipe
from flotilla.recipes import parse_recipe
from flotilla.runtime.agent_client import AgentClient
from flotilla.runtime.procs import process_start_ticks
from flotilla.runtime.taskspec import EXITED, TaskSpec, TaskState
from tests.conftest import Api, make_settings, open_api
from tests.factories import apply_and_start, job, wait_for, wait_run


def identity(rank: int, nprocs: int, gpus: tuple[int, ...], scale: int = 2) -> TaskIdentity:
    return TaskIdentity("r1", "train", rank, scale, nprocs, "10.0.0.1", 29500, ("a", "b"), gpus)


# -- the per-process environment (pure) ------------------------------------------------


def test_each_process_gets_its_indices_and_own_gpus() -> None:
    envs = process_environments(identity(rank=1, nprocs=2, gpus=tuple(range(8))))
    assert envs == [
        {
            "FLOTILLA_LOCAL_RANK": "0",
            "SATURN_RUN_LOCAL_RANK": "0",
            "LOCAL_RANK": "0",
            "FLOTILLA_PROCESS_INDEX": "2",
            "RANK": "2",
            "CUDA_VISIBLE_DEVICES": "0,1,2,3",
        },
        {
            "FLOTILLA_LOCAL_RANK": "1",
            "SATURN_RUN_LOCAL_RANK": "1",
            "LOCAL_RANK": "1",
            "FLOTILLA_PROCESS_INDEX": "3",
            "RANK": "3",
            "CUDA_VISIBLE_DEVICES": "4,5,6,7",
        },
    ]
    one_each = process_environments(identity(rank=0, nprocs=8, gpus=(8, 9, 10, 11, 12, 13, 14, 15)))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in one_each] == [str(g) for g in range(8, 16)]
    assert [e["RANK"] for e in one_each] == [str(i) for i in range(8)]


def test_without_gpus_every_process_gets_none() -> None:
    envs = process_environments(identity(rank=3, nprocs=4, gpus=(), scale=4))
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["", "", "", ""]
    assert [e["RANK"] for e in envs] == ["12", "13", "14", "15"]
    assert [e["LOCAL_RANK"] for e in envs] == ["0", "1", "2", "3"]


def test_one_process_per_task_keeps_the_task_environment() -> None:
    task = identity(rank=1, nprocs=1, gpus=(2, 3))
    [env] = process_environments(task)
    assert env["RANK"] == env["FLOTILLA_PROCESS_INDEX"] == "1" and env["LOCAL_RANK"] == "0"
    assert env["CUDA_VISIBLE_DEVICES"] == task_environment(task)["CUDA_VISIBLE_DEVICES"] == "2,3"
    assert "RANK" not in task_environment(task)  # per process, never per task


def test_task_spec_round_trip_and_older_specs() -> None:
    spec = TaskSpec("t", "/d", "/w", {"A": "1"}, argv=["true"], process_env=[{"RANK": "0"}])
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    older = spec.to_dict()
    del older["process_env"]  # written before tasks had several processes
    assert TaskSpec.from_dict(older).process_env == []


# -- the recipe check --------------------------------------------------------------


@pytest.mark.parametrize("gpu", ["H100:8", 8, "8"])
def test_nprocs_must_divide_the_gpus_per_task(gpu: str | int) -> None:
    with pytest.raises(InvalidRecipe) as caught:
        parse_recipe(job("split", "true", nprocs=3, resources={"gpu": gpu}))
    problems = {p.path: p.message for p in caught.value.problems}
    assert problems == {"spec.nprocs": "nprocs (3) must divide the GPUs per task (8)"}
    parse_recipe(job("split", "true", nprocs=4, resources={"gpu": gpu}))
    parse_recipe(job("cpu", "true", nprocs=3))  # no GPUs: any number of processes


# -- real supervisors, driven through the node agent -----------------------------------


@pytest.fixture
async def agent(data_dir: Path) -> AsyncIterator[AgentClient]:
    async def ignore(_state: TaskState) -> None:
        return None

    client = AgentClient(data_dir, ignore, idle_exit=60.0)
    await client.connect()
    yield client
    await client.close()  # data_dir's cleanup kills the agent and what it started


def task_spec(data_dir: Path, name: str, nprocs: int, shell: str, grace: float = 30.0) -> TaskSpec:
    """A task of rank 1 in a gang of 2 with 6 GPUs, its processes' env from the
    real contract. Under data_dir/runs, where the test cleanup finds it."""
    task = identity(rank=1, nprocs=nprocs, gpus=(0, 1, 2, 3, 4, 5))
    workdir = data_dir / "work" / name
    return TaskSpec(
        task_id=name,
        task_dir=str(data_dir / "runs" / name),
        workdir=str(workdir),
        env={"PATH": os.environ["PATH"], **task_environment(task)},
        shell=shell,
        grace_seconds=grace,
        process_env=process_environments(task),
    )


async def wait_exited(agent: AgentClient, spec: TaskSpec, timeout: float = 20.0) -> TaskState:
    async def exited() -> TaskState | None:
        [state] = await agent.inspect([(spec.task_id, spec.task_dir)])
        return state if state.phase == EXITED else None

    result: TaskState = await wait_for(exited, timeout, what=f"{spec.task_id} to exit")
    return result


async def wait_pids(workdir: Path, count: int) -> list[int]:
    """The pids the processes wrote to pid.<local rank> (written atomically)."""

    async def written() -> list[int] | None:
        files = [workdir / f"pid.{i}" for i in range(count)]
        return [int(f.read_text()) for f in files] if all(f.exists() for f in files) else None

    pids: list[int] = await wait_for(written, what="every process's pid")
    return pids


def is_gone(pid: int) -> bool:
    return process_start_ticks(pid) is None  # None for a finished (or zombie) process


# Each process writes its own pid (bash's $$ is the process `exec` turns into sleep).
WRITE_PID = "echo $$ > pid.$LOCAL_RANK.tmp && mv pid.$LOCAL_RANK.tmp pid.$LOCAL_RANK"


async def test_every_process_runs_with_its_own_environment(
    agent: AgentClient, data_dir: Path
) -> None:
    line = 'echo "$RANK $LOCAL_RANK $SATURN_RUN_LOCAL_RANK $CUDA_VISIBLE_DEVICES"'
    spec = task_spec(data_dir, "three", 3, f"{line} > out.$LOCAL_RANK; echo done $LOCAL_RANK")
    await agent.launch(spec)
    state = await wait_exited(agent, spec)
    assert state.exit_code == 0 and not state.stopped
    workdir = Path(spec.workdir)
    outputs = [(workdir / f"out.{i}").read_text() for i in range(3)]
    assert outputs == ["3 0 0 0,1\n", "4 1 1 2,3\n", "5 2 2 4,5\n"]
    log = (Path(spec.task_dir) / "main.log").read_text()
    assert sorted(log.splitlines()) == ["done 0", "done 1", "done 2"]  # all append


async def test_one_failing_process_ends_the_others(agent: AgentClient, data_dir: Path) -> None:
    # Local rank 1 fails once the others are up; they would sleep for a minute.
    fail = "while [ ! -e pid.0 ] || [ ! -e pid.2 ]; do sleep 0.01; done; echo failing; exit 3"
    shell = f'if [ "$LOCAL_RANK" = 1 ]; then {fail}; fi; {WRITE_PID}; exec sleep 60'
    spec = task_spec(data_dir, "gang", 3, shell, grace=30.0)
    begun = time.monotonic()
    await agent.launch(spec)
    state = await wait_exited(agent, spec)
    assert time.monotonic() - begun < 15  # SIGTERM ended them, not the 30 s grace
    assert state.exit_code == 3 and not state.stopped
    workdir = Path(spec.workdir)
    sleepers = [int((workdir / f"pid.{i}").read_text()) for i in (0, 2)]
    assert state.pid == sleepers[0]  # the first process leads the group and is reported
    assert all(is_gone(pid) for pid in sleepers)
    assert "failing" in (Path(spec.task_dir) / "main.log").read_text()


async def test_stop_reaches_every_process(agent: AgentClient, data_dir: Path) -> None:
    # Local rank 1 ignores SIGTERM: it ends only by the SIGKILL after the grace period.
    shell = f'if [ "$LOCAL_RANK" = 1 ]; then trap "" TERM; fi; {WRITE_PID}; exec sleep 60'
    spec = task_spec(data_dir, "stopme", 2, shell, grace=0.5)
    await agent.launch(spec)
    pids = await wait_pids(Path(spec.workdir), 2)
    await agent.stop(spec.task_id, spec.task_dir)
    state = await wait_exited(agent, spec)
    assert state.stopped and state.pid == pids[0]
    assert state.exit_code == 143  # the first to end: local rank 0, by SIGTERM
    assert all(is_gone(pid) for pid in pids)


# -- through the API: GPUs split between a gang's processes ------------------------------


@pytest.fixture
async def eight_gpu_api(data_dir: Path) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir, local_gpus="H100:8")):
        yield item


async def test_gang_of_two_tasks_with_two_processes_each(eight_gpu_api: Api) -> None:
    client = eight_gpu_api.client
    recipe = job(
        "wide",
        'echo "$RANK $NODE_RANK $WORLD_SIZE $CUDA_VISIBLE_DEVICES"',
        scale=2,
        nprocs=2,
        resources={"gpu": 4},
    )
    _, run_id = await apply_and_start(client, recipe)
    await wait_run(client, run_id, "succeeded")
    seen: dict[int, list[int]] = {}
    for node_rank in (0, 1):
        logs = await client.get(f"/api/runs/{run_id}/logs", params={"rank": node_rank})
        lines = logs.text.splitlines()
        assert len(lines) == 2, logs.text
        for line in lines:
            rank, task_rank, world, gpus = line.split()
            assert int(task_rank) == node_rank and world == "4"
            assert int(rank) // 2 == node_rank  # global index = task rank * nprocs + local
            seen[int(rank)] = [int(g) for g in gpus.split(",")]
    assert sorted(seen) == [0, 1, 2, 3]
    assert all(len(gpus) == 2 for gpus in seen.values())
    every_gpu = [g for gpus in seen.values() for g in gpus]
    assert sorted(every_gpu) == list(range(8))  # each GPU to exactly one process


async def test_api_rejects_nprocs_that_do_not_divide_the_gpus(eight_gpu_api: Api) -> None:
    recipe = job("uneven", "true", nprocs=3, resources={"gpu": "H100:8"})
    response = await eight_gpu_api.client.put("/api/recipes", json=recipe)
    assert response.status_code == 422, response.text
    errors = {e["field"]: e["message"] for e in response.json()["errors"]}
    assert errors == {"spec.nprocs": "nprocs (3) must divide the GPUs per task (8)"}
