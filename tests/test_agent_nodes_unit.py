"""Review of issue 12's remote-node code: unit-level failures, no network, no root.

Each test names the defect it shows; each fails on the code as reviewed."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from flotilla.compute.agents.logmirror import LogMirror, mirror_files
from flotilla.compute.agents.router import NodeRouter
from flotilla.compute.base import TaskRef
from flotilla.errors import InvalidRecipe, TemporaryError
from flotilla.runtime import hostfiles
from flotilla.runtime.taskspec import TaskState
from flotilla.server.changes import Changes
from flotilla.server.db.models import NodeModel
from flotilla.server.reconcilers.agent_nodes import AgentNodes
from flotilla.server.routers.agents import agent_endpoint

TASK = TaskRef(task_id="r1-0", run_id="r1", attempt=1, rank=0, node="gpu-7")


def _remote_task(runs: Path, text: bytes) -> Path:
    task_dir = runs / "r1" / "attempt-1" / "rank-0"
    task_dir.mkdir(parents=True)
    (task_dir / "main.log").write_bytes(text)
    return task_dir


def _reader(runs: Path) -> Any:
    async def read_log(task_dir: str, name: str, offset: int, limit: int) -> dict[str, Any]:
        await asyncio.sleep(0)  # a request over the network: other coroutines run meanwhile
        return hostfiles.read_log(runs, task_dir, name, offset, limit)

    return read_log


async def test_a_final_pull_beside_the_periodic_pull_copies_the_log_once(tmp_path: Path) -> None:
    """logmirror.py:75-86 (at HEAD): the offset is the local file's size, read before the
    request; the router's pump (router.py:149-158) and the pull at a task's end
    (remote.py:117-137, and observe at remote.py:101-102) run concurrently for the
    same task, both read the same offset, and both append the same bytes."""
    runs = tmp_path / "node-runs"
    task_dir = _remote_task(runs, b"epoch 1 loss 0.3\nepoch 2 loss 0.1\n")
    mirror = LogMirror(tmp_path / "mirror", _reader(runs))
    mirror.follow(TASK, str(task_dir))
    mirror.ended(TASK.task_id)
    await asyncio.gather(mirror.pull(), mirror.pull_task(TASK.task_id))
    copy = mirror_files(tmp_path / "mirror", TASK).main.read_bytes()
    assert copy == b"epoch 1 loss 0.3\nepoch 2 loss 0.1\n", copy


def _truncate_and_write(path: Path, data: bytes) -> None:
    with open(path, "r+b") as log:
        log.truncate(0)
        log.write(data)


async def test_output_after_a_log_is_truncated_still_reaches_the_mirror(tmp_path: Path) -> None:
    """logmirror.py:78-82: once the remote file is shorter than the local copy
    (a task may ftruncate its own stdout, which it holds open for writing), every
    read at the old offset returns nothing and the rest of the log is never copied,
    with nothing said."""
    runs = tmp_path / "node-runs"
    task_dir = _remote_task(runs, b"x" * 100)
    mirror = LogMirror(tmp_path / "mirror", _reader(runs))
    mirror.follow(TASK, str(task_dir))
    await mirror.pull()
    _truncate_and_write(task_dir / "main.log", b"after the truncation\n")
    await mirror.pull()
    copy = mirror_files(tmp_path / "mirror", TASK).main.read_bytes()
    assert b"after the truncation" in copy


def test_read_log_does_not_follow_a_symlink_named_main_log(tmp_path: Path) -> None:
    """hostfiles.py:26-47: only the task directory is resolved and checked; the
    log file itself is opened following symlinks, so a main.log that is a link
    (a task that can write its own directory: any task not run as its own user)
    makes the agent read, and the control plane mirror into the user's log, any
    file the agent can read, e.g. the node's TLS key."""
    runs = tmp_path / "runs"
    key = tmp_path / "agent" / "node.key"
    key.parent.mkdir()
    key.write_text("-----BEGIN PRIVATE KEY-----\nsecret\n")
    task_dir = runs / "r1" / "attempt-1" / "rank-0"
    task_dir.mkdir(parents=True)
    os.symlink(key, task_dir / "main.log")
    try:
        answer = hostfiles.read_log(runs, str(task_dir), "main", 0, 4096)
    except (OSError, ValueError):
        return  # refused: what it should do
    assert answer["data"] == "", "the node key was served as the task's log"


def test_a_joining_agent_cannot_register_an_address_that_is_not_a_host() -> None:
    """routers/agents.py:101: only '/@ ?#' are refused; a newline, quotes or `$(`
    become the node's address (services/fleets/agent_nodes.py:31-34), which is written
    into HAProxy's configuration line by line (lb/haproxy.py:84-85) and handed to
    other ranks as their peer's address."""
    for bad in ("gpu-1\n    server x 10.0.0.9:1:7477", 'a"b:7477', "$(id):7477", "a,b:7477"):
        with pytest.raises(InvalidRecipe, match="listen"):
            agent_endpoint(bad, None)


class _Node:
    """A RemoteNode whose agent answers `hello` but not `live_tasks` (an agent of an
    older version: `unknown op`, or the connection dropped after the heartbeat)."""

    name = "gpu-7"
    runs_dir = "/var/lib/flotilla/runs"

    async def live_task_dirs(self) -> list[str]:
        raise TemporaryError('node agent refused live_tasks: ValueError("unknown op")')


class _Router:
    def __init__(self) -> None:
        self.failed = {"gpu-7": "node gpu-7 failed"}

    def mark_back(self, name: str) -> None:
        self.failed.pop(name, None)


class _Session:
    def add(self, _: object) -> None:
        pass


async def test_a_failed_node_whose_tasks_cannot_be_listed_is_not_readmitted() -> None:
    """reconcilers/agent_nodes.py:129-132 (at HEAD): a `live_tasks` that fails counts as
    "nothing to stop" (0), and 0 is what lets a PROVISIONING node back to READY
    (:171-178, `mark_back`). A failed node whose runs were requeued elsewhere then
    takes new work while its old tasks still run there, unfenced: the same run
    twice, and no one stops the old copy (its tasks are LOST in the database)."""
    clock = SimpleNamespace(now=lambda: datetime.now(UTC))
    ctx = SimpleNamespace(
        settings=SimpleNamespace(node_heartbeat_seconds=5.0, run_as_user=None),
        clock=clock,
        changes=Changes(),
    )
    router = _Router()
    loop = AgentNodes(ctx, router)  # type: ignore[arg-type]
    row = NodeModel(
        id="n1", name="gpu-7", provider="agent", state="failed", gpus=[], labels={}, fleet_id=None
    )
    hello = {"version": "0", "inventory": {"gpus": [], "cpus": 8}}
    for _ in range(2):  # failed -> provisioning, then provisioning -> ?
        fenced = await loop._fence(_Node(), [row])  # type: ignore[arg-type]
        await loop._heard(_Session(), row, hello, fenced)  # type: ignore[arg-type]
    assert row.state != "ready", row.reason
    assert "gpu-7" in router.failed


class _Local:
    async def observe(self, tasks: list[TaskRef]) -> list[TaskState]:
        return [TaskState(t.task_id, "running", pid=1) for t in tasks]


class _SkewedNode:
    name = "gpu-7"
    answering = True  # heard at its last heartbeat (the attribute in progress in router.py)

    async def observe(self, tasks: list[TaskRef]) -> list[TaskState]:
        # What TaskState.from_dict(**data) raises on a field a newer agent added.
        raise TypeError("TaskState.__init__() got an unexpected keyword argument 'cgroup'")


async def test_one_node_that_answers_oddly_does_not_blind_supervision_of_all(
    tmp_path: Path,
) -> None:
    """router.py:126-135: any error but TemporaryError from one node's observe is
    re-raised, so supervision's full step (supervision.py:73) fails for every run
    on every node, the local one included, for as long as that node answers so
    (e.g. a joined host on another Flotilla version: nothing checks `version`)."""
    router = NodeRouter(_Local(), tmp_path)  # type: ignore[arg-type]
    router.remote["gpu-7"] = _SkewedNode()  # type: ignore[assignment]
    here = TaskRef("r2-0", "r2", 1, 0, "local")
    there = TaskRef("r1-0", "r1", 1, 0, "gpu-7")
    states = await router.observe([here, there])
    assert [s.task_id for s in states] == ["r2-0"]
