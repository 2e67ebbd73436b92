"""The pure core: run verdicts, the environment contract, units."""

from __future__ import annotations

import pytest

from flotilla.core.envcontract import TaskIdentity, task_environment
from flotilla.core.status import RunStatus, TaskStatus, can_switch
from flotilla.core.units import GpuRequest, parse_duration, parse_gpu, parse_memory
from flotilla.core.verdict import TaskView, judge_run


def test_verdicts() -> None:
    running = TaskView(0, TaskStatus.RUNNING)
    assert (
        judge_run(RunStatus.STARTING, [running, TaskView(1, TaskStatus.RUNNING)], False).status
        == RunStatus.RUNNING
    )
    assert (
        judge_run(RunStatus.STARTING, [running, TaskView(1, TaskStatus.STARTING)], False).status
        is None
    )
    gang = judge_run(RunStatus.RUNNING, [running, TaskView(1, TaskStatus.FAILED, 3)], False)
    assert gang.status is None and gang.stop_others == "rank 1 exited with code 3"
    failed = judge_run(
        RunStatus.RUNNING,
        [TaskView(0, TaskStatus.STOPPED, 143), TaskView(1, TaskStatus.FAILED, 3)],
        False,
    )
    assert failed.status == RunStatus.FAILED and failed.exit_code == 3
    stopped = judge_run(RunStatus.RUNNING, [TaskView(0, TaskStatus.STOPPED, 143)], True)
    assert stopped.status == RunStatus.STOPPED and stopped.exit_code == 143
    lost = judge_run(RunStatus.RUNNING, [TaskView(0, TaskStatus.LOST, message="node gone")], False)
    assert lost.status == RunStatus.ERROR and "node gone" in lost.reason
    ok = judge_run(RunStatus.RUNNING, [TaskView(0, TaskStatus.SUCCEEDED, 0)], False)
    assert ok.status == RunStatus.SUCCEEDED and ok.exit_code == 0


def test_status_transitions() -> None:
    assert can_switch(RunStatus.PENDING, RunStatus.STARTING)
    assert can_switch(RunStatus.FAILED, RunStatus.PENDING)  # retries
    assert not can_switch(RunStatus.SUCCEEDED, RunStatus.RUNNING)
    assert not can_switch(RunStatus.STOPPED, RunStatus.PENDING)
    assert RunStatus.RUNNING.holds_resources() and not RunStatus.PENDING.holds_resources()


def test_environment_contract_names() -> None:
    identity = TaskIdentity(
        "r1", "train", 1, 2, 1, "10.0.0.1", 29500, ("10.0.0.1", "10.0.0.2"), (2, 3)
    )
    env = task_environment(identity)
    assert env["SATURN_JOB_LEADER"] == env["MASTER_ADDR"] == env["FLOTILLA_LEADER"] == "10.0.0.1"
    assert env["NODE_RANK"] == env["SATURN_JOB_RANK"] == "1"
    assert "RANK" not in env and "LOCAL_RANK" not in env  # per process: process_environments
    assert env["WORLD_SIZE"] == env["NNODES"] == "2" and env["MASTER_PORT"] == "29500"
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["SATURN_JOB_PEERS"] == "10.0.0.1,10.0.0.2"
    multi = task_environment(TaskIdentity("r", "j", 0, 2, 4, "a", 1, ("a", "b"), ()))
    assert multi["WORLD_SIZE"] == "8" and "RANK" not in multi


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("30s", 30.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0), (5, 5.0)],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_units_reject_garbage() -> None:
    assert parse_memory("64Gi") == 64 * 2**30 and parse_memory("512M") == 512 * 2**20
    assert parse_gpu("h100:8") == GpuRequest("H100", 8) and parse_gpu(2) == GpuRequest(None, 2)
    for bad, parse in (("soon", parse_duration), ("lots", parse_memory), ("H100:x", parse_gpu)):
        with pytest.raises(ValueError, match="is not"):
            parse(bad)  # type: ignore[operator]
