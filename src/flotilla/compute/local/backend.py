"""The local backend: one node (this machine), tasks launched through the node agent.

Called by the scheduler and supervision reconcilers through `ComputeBackend`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from flotilla.compute import paths
from flotilla.compute.base import (
    GpuDevice,
    LaunchRequest,
    LogFiles,
    NodeInventory,
    TaskEventHandler,
    TaskRef,
    Workload,
)
from flotilla.compute.launch import build_task_spec, describe_workload
from flotilla.runtime.agent_client import AgentClient
from flotilla.runtime.inventory import local_gpus, memory_bytes
from flotilla.runtime.isolation import probe
from flotilla.runtime.taskspec import TaskFiles, TaskSpec, TaskState

NODE_NAME = "local"


class LocalBackend:
    name = "local"

    def __init__(self, data_dir: Path, declared_gpus: str | None, idle_exit: float = 600.0) -> None:
        self.data_dir = data_dir
        self.runs_dir = data_dir / "runs"
        gpus, self.gpu_source = local_gpus(declared_gpus)
        found = probe()
        self.inventory = NodeInventory(
            name=NODE_NAME,
            address="127.0.0.1",
            gpus=gpus,
            cpus=os.cpu_count() or 1,
            memory_bytes=memory_bytes(),
            # What this machine's agent can isolate: it runs as this process's
            # user, so this process's probe is the agent's.
            labels={
                "hostname": socket.gethostname(),
                "gpu_source": self.gpu_source,
                "isolation": found.summary(),
                "gpu_fencing": found.gpu_fencing,
            },
        )
        self.idle_exit = idle_exit
        self.agent: AgentClient | None = None

    async def start(self, on_event: TaskEventHandler) -> None:
        self.agent = AgentClient(self.data_dir, on_event, idle_exit=self.idle_exit)
        await self.agent.connect()

    async def close(self) -> None:
        if self.agent is not None:
            await self.agent.close()

    def nodes(self) -> list[NodeInventory]:
        return [self.inventory]

    def gpu(self, index: int) -> GpuDevice | None:
        return next((g for g in self.inventory.gpus if g.index == index), None)

    def _task_dir(self, task: TaskRef) -> str:
        return paths.task_dir(str(self.runs_dir), task.run_id, task.attempt, task.rank)

    async def launch(self, request: LaunchRequest) -> None:
        assert self.agent is not None, "backend not started"
        await self.agent.launch(self.task_spec(request))

    def task_spec(self, request: LaunchRequest) -> TaskSpec:
        return build_task_spec(
            request, str(self.runs_dir), {**_base_env(), "HOME": os.environ.get("HOME", "")}
        )

    async def stop(self, task: TaskRef, grace_seconds: float) -> None:
        assert self.agent is not None, "backend not started"
        await self.agent.stop(task.task_id, self._task_dir(task))

    async def observe(self, tasks: list[TaskRef]) -> list[TaskState]:
        assert self.agent is not None, "backend not started"
        if not tasks:
            return []
        return await self.agent.inspect([(t.task_id, self._task_dir(t)) for t in tasks])

    def log_files(self, task: TaskRef) -> LogFiles:
        files = TaskFiles(self._task_dir(task))
        return LogFiles(setup=files.setup_log, main=files.main_log)

    def discard_logs(self, task: TaskRef) -> None:
        self.log_files(task).remove()

    def host_note(self, workload: Workload) -> str | None:
        return f"local backend: {describe_workload(workload, self.inventory.labels['hostname'])}"


def _base_env() -> dict[str, str]:
    """The part of the server's environment a run inherits: enough to find programs,
    never the server's own secrets (FLOTILLA_ADMIN_TOKEN, database URLs)."""
    keep = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER", "LOGNAME", "SHELL")
    return {k: v for k, v in os.environ.items() if k in keep}
