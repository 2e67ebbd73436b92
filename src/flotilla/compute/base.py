"""The interface every compute backend implements, and the plain data it speaks.

The scheduler decides where tasks go; a backend makes it so and reports back.
Contract for every method: idempotent (the reconcilers repeat calls after crashes),
`TemporaryError` means "try again later", any other `FlotillaError` is permanent
for that request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# Re-exported: the backend contract speaks it.
from flotilla.runtime.inventory import GpuDevice as GpuDevice
from flotilla.runtime.taskspec import Limits, RunAs, TaskState


@dataclass(frozen=True)
class TaskRef:
    task_id: str
    run_id: str
    attempt: int
    rank: int
    node: str | None


@dataclass(frozen=True)
class Checkout:
    """A git repository to clone before the command runs."""

    url: str
    path: str | None  # where, as the recipe says (relative to the working dir, or absolute)
    reference: str | None = None
    reference_type: str = "branch"


@dataclass(frozen=True)
class Workload:
    """What a task runs, in the backend's terms: the neutral launch description
    every backend receives (built from the user's recipe by `services/runs/launch.py`;
    backends never see the recipe)."""

    argv: list[str] | None  # a list command, run as is
    shell: str | None  # a string command, run by the shell
    start_script: str | None = None
    working_directory: str | None = None
    checkouts: tuple[Checkout, ...] = ()
    image: str | None = None  # an image reference to run in, where the node can
    # What was asked for and is not honoured by any backend (an image given as a
    # mapping, an instance type): said in the run's events.
    unsupported: tuple[str, ...] = ()


@dataclass
class LaunchRequest:
    task: TaskRef
    workload: Workload
    env: dict[str, str]  # recipe env + environment contract + secrets as env vars
    secret_files: list[tuple[str, str]] = field(default_factory=list)  # (location, content)
    grace_seconds: float = 10.0
    # One dict per process of the task (`nprocs`), each applied on top of `env`: its
    # indices and its share of the GPUs. Empty: one process with `env` as is.
    process_env: list[dict[str, str]] = field(default_factory=list)
    # The run's checkpoint directory (FLOTILLA_CHECKPOINT_DIR): the same for every
    # attempt, so a requeued run resumes from what it saved.
    checkpoint_dir: str | None = None
    # The Unix account the task runs as (`services/runs/launch.py:run_as`); None: no
    # Flotilla user to run it as.
    run_as: RunAs | None = None
    # With run_as, its cgroup limits and the control plane's paths it must not see
    # (data dir, checkpoint root, database: `services/runs/launch.py: task_limits,
    # protected_paths`). The node keeps the task's own directory and checkpoint_dir.
    limits: Limits | None = None
    hide: list[str] = field(default_factory=list)
    # Its node executes virtually (`compute/virtual/`): timed, not run.
    virtual: bool = False


@dataclass
class NodeInventory:
    name: str
    address: str
    gpus: list[GpuDevice]
    cpus: int
    memory_bytes: int
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def gpu_type(self) -> str | None:
        return self.gpus[0].type if self.gpus else None


@dataclass(frozen=True)
class LogFiles:
    setup: Path
    main: Path

    def remove(self) -> None:
        for path in (self.setup, self.main):
            path.unlink(missing_ok=True)


TaskEventHandler = Callable[[TaskState], Awaitable[None]]


class ComputeBackend(Protocol):
    name: str

    async def start(self, on_event: TaskEventHandler) -> None:
        """Connect to the backend; afterwards task changes are pushed to `on_event`
        (best effort: `observe` is the level-triggered truth)."""

    async def close(self) -> None:
        """Disconnect. Never stops running work."""

    def nodes(self) -> list[NodeInventory]:
        """The nodes this backend offers now, with their full GPU inventory."""

    async def launch(self, request: LaunchRequest) -> None:
        """Start one task. Idempotent by task id: a second call does nothing.
        Returns once the task's processes exist, without waiting for them."""

    async def stop(self, task: TaskRef, grace_seconds: float) -> None:
        """SIGTERM the task's processes, SIGKILL after the grace period. Idempotent;
        returns at once (the outcome arrives as an event / through `observe`)."""

    async def observe(self, tasks: list[TaskRef]) -> list[TaskState]:
        """The current state of each task, read from the node's own records."""

    def log_files(self, task: TaskRef) -> LogFiles:
        """Where the task's logs are, readable while it runs and after it ends."""

    def discard_logs(self, task: TaskRef) -> None:
        """Remove a finished task's logs from this machine (retention): what
        `log_files` names for it, and nothing else."""

    def host_note(self, workload: Workload) -> str | None:
        """A line for the run's events about how the workload runs here (its image,
        what is not honoured), or None."""


class VirtualExecution(ComputeBackend, Protocol):
    """The backend of virtual nodes (`compute/virtual/`), beside the router's
    agents: it runs the launches marked `virtual` and answers for the tasks it
    holds."""

    def holds(self, task: TaskRef) -> bool:
        """Whether `task` is one of this backend's (running, or ended lately)."""
