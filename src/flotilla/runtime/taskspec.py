"""The plain-data contract between the server and a node agent: what to launch
(`TaskSpec`) and what became of it (`TaskState`). JSON on the wire and on disk."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class GitClone:
    url: str
    dest: str
    reference: str | None = None
    reference_type: str = "branch"


@dataclass
class SecretFile:
    path: str
    content: str


@dataclass
class RunAs:
    """The Unix account a task runs as on its node: its owner's numbers, allocated
    once by the server and never reused."""

    user: str
    uid: int
    gid: int
    groups: list[tuple[str, int]] = field(default_factory=list)  # supplementary (name, gid)
    home: str | None = None  # None: the task's own home in its task directory

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunAs:
        data = dict(data)
        data["groups"] = [(str(n), int(g)) for n, g in data.get("groups", [])]
        return cls(**data)


@dataclass
class Limits:
    """A task's cgroup limits; None: not limited."""

    memory_bytes: int | None = None
    cpus: float | None = None  # CPU time as a number of CPUs (a CFS quota)
    pids: int | None = None
    # The node's GPUs (indices) the task may open; the others are fenced off where
    # the node's cgroups can (`isolation/devices.py`). None: not fenced.
    gpus: list[int] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        return cls(**data)


@dataclass
class TaskSpec:
    task_id: str
    task_dir: str
    workdir: str
    env: dict[str, str]
    argv: list[str] | None = None
    shell: str | None = None
    start_script: str | None = None
    git: list[GitClone] = field(default_factory=list)
    files: list[SecretFile] = field(default_factory=list)
    grace_seconds: float = 10.0
    # One entry per process of the task, each applied on top of `env`; empty (as in
    # specs written before tasks had several processes) means one process with `env`.
    process_env: list[dict[str, str]] = field(default_factory=list)
    # Isolation (runtime/isolation): the account to run as, the cgroup limits, and
    # the paths the task must not see (the server's data dir; the task's own
    # directory stays visible). A task with run_as or limits gets its own cgroup.
    run_as: RunAs | None = None
    limits: Limits | None = None
    hide: list[str] = field(default_factory=list)
    # Directories outside the task directory that the task works in (its run's
    # checkpoint dir): visible even under a hidden path, and with run_as made its
    # user's (0700).
    keep: list[str] = field(default_factory=list)
    # The image to run each process in (runtime/containers), where the node has a
    # container runtime; elsewhere the processes run on the host, as without it.
    image: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        data = dict(data)
        data["git"] = [GitClone(**g) for g in data.get("git", [])]
        data["files"] = [SecretFile(**f) for f in data.get("files", [])]
        if data.get("run_as") is not None:
            data["run_as"] = RunAs.from_dict(data["run_as"])
        if data.get("limits") is not None:
            data["limits"] = Limits.from_dict(data["limits"])
        return cls(**data)


# Phases a task goes through on its node.
SETUP = "setup"  # cloning repositories, running the start script
RUNNING = "running"  # the command's process is alive
EXITED = "exited"  # result.json written
LOST = "lost"  # supervisor gone without a result (node rebooted, killed with -9)
UNKNOWN = "unknown"  # never launched here


@dataclass
class TaskState:
    task_id: str
    phase: str
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    stopped: bool = False
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskState:
        return cls(**data)


class TaskFiles:
    """Where a task keeps its state on the node's disk."""

    def __init__(self, task_dir: str | Path) -> None:
        self.dir = Path(task_dir)
        self.supervisor = self.dir / "supervisor.json"
        self.started = self.dir / "started.json"
        self.result = self.dir / "result.json"
        self.setup_log = self.dir / "setup.log"
        self.main_log = self.dir / "main.log"
        self.supervisor_log = self.dir / "supervisor.log"
        self.cgroup = self.dir / "cgroup.json"  # where the task's cgroup is, if it has one
