"""Tenant isolation on a node: what the node can do (`probe`), and per task its
cgroup, its Unix account and its private view of the file system.

The agent probes once at start (`NodeIsolation.detect`) and hands the result to
every supervisor it forks; the supervisor applies it to its task
(`TaskIsolation`, in `task.py`). Contract:

- isolation needs the agent to run as root; otherwise tasks run as the agent's
  user, as before, and the probe says "none (...)": never a silent pretence;
- a task whose spec has `run_as` or `limits` gets its own cgroup (limits, and a
  kill of the whole tree, `setsid` escapes included); with `run_as` it runs as
  that account (created on the node with exactly those numbers); the paths in
  `hide` are empty for it, its own task directory excepted; the node's GPUs that
  are not the task's cannot be opened from it where the devices cgroup exists;
- what the node lacks is skipped and named in the probe's reason ("partial").
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flotilla.runtime.containers import ContainerRuntime
from flotilla.runtime.containers import detect as detect_containers
from flotilla.runtime.isolation.accounts import tools_present
from flotilla.runtime.isolation.cgroups import (
    DEVICES,
    LIMIT_CONTROLLERS,
    CgroupLayout,
    TaskCgroup,
    agent_key,
    discover,
    kill_supported,
)
from flotilla.runtime.isolation.mounts import mount_namespace_works

FULL = "full"
PARTIAL = "partial"
NONE = "none"


@dataclass(frozen=True)
class IsolationProbe:
    """What this node can isolate; `summary()` is what the node shows."""

    level: str  # FULL | PARTIAL | NONE
    reason: str  # empty when full
    root: bool
    cgroups: str  # "v2" | "hybrid" | "v1" | "none"
    limits: tuple[str, ...]  # the limit controllers usable: memory, cpu, pids
    group_kill: bool  # cgroup.kill: a stop reaches processes that left the group
    mount_namespace: bool  # the data dir can be hidden
    accounts: bool  # useradd/groupadd: tasks can run as their owner's account
    # How a task's GPUs are fenced from the node's others (`devices.py`): not part of
    # the level, since pure cgroup v2 cannot without a BPF program; said on the node.
    gpu_fencing: str = "none"

    def summary(self) -> str:
        return self.level if self.level == FULL else f"{self.level} ({self.reason})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe(layout: CgroupLayout | None = None) -> IsolationProbe:
    """Look at this process's powers and the machine's cgroups (a fork to try a
    mount namespace: ~1 ms; call once)."""
    layout = discover() if layout is None else layout
    uid = os.geteuid()
    if uid != 0:
        return IsolationProbe(
            NONE,
            f"the agent runs as uid {uid}, not root: tasks run as that user,"
            " with no cgroup and the agent's files in reach",
            False,
            layout.version,
            (),
            False,
            False,
            False,
        )
    writable = all(os.access(base, os.W_OK) for base in layout.bases.values())
    layout = dataclasses.replace(layout, kill=writable and kill_supported(layout))
    usable = layout.version != "none" and writable
    limits = layout.controllers if usable else ()
    namespace = mount_namespace_works()
    accounts = tools_present()
    problems = []
    if layout.version == "none":
        problems.append("no cgroup hierarchy mounted")
    elif not writable:
        problems.append("the agent's cgroups are not writable")
    elif missing := [c for c in LIMIT_CONTROLLERS if c not in limits]:
        where = "enabled in the agent's group's subtree_control" if layout.version == "v2" else ""
        problems.append(f"no {'/'.join(missing)} limit {where}".rstrip())
    if usable and not layout.kill:
        problems.append("no cgroup.kill: a stop signals the group's members one by one")
    if not namespace:
        problems.append("no mount namespace: the data dir stays visible")
    if not accounts:
        problems.append("no useradd/groupadd: tasks cannot run as their owner's account")
    level = FULL if not problems else PARTIAL
    if usable and DEVICES in layout.bases:
        fencing = "devices cgroup"
    else:
        why = "cgroup v2 needs a BPF device program" if usable else "no usable cgroups"
        fencing = f"none ({why}): CUDA_VISIBLE_DEVICES only"
    return IsolationProbe(
        level,
        "; ".join(problems),
        True,
        layout.version,
        limits,
        usable and layout.kill,
        namespace,
        accounts,
        fencing,
    )


@dataclass(frozen=True)
class NodeIsolation:
    """The agent's probe, where its tasks' cgroups go and the node's container
    runtime (runtime/containers); passed to supervisors."""

    probe: IsolationProbe
    layout: CgroupLayout = field(default_factory=lambda: CgroupLayout("none"))
    key: str = "flotilla"  # this agent's group in each hierarchy
    containers: ContainerRuntime = field(
        default_factory=lambda: ContainerRuntime.none("not probed")
    )

    @classmethod
    def detect(cls, identity: str) -> NodeIsolation:
        """`identity`: unique to the agent and stable across its restarts (its lock
        file's path), so a new agent finds its predecessor's task groups. The
        lock's directory is the agent's own: its containers.conf goes there."""
        layout = discover()
        found = probe(layout)
        if not found.root or (not found.limits and not found.group_kill):
            layout = CgroupLayout("none")
        else:
            layout = dataclasses.replace(layout, kill=found.group_kill)
        containers = detect_containers(Path(identity).parent)
        return cls(found, layout, agent_key(identity), containers)

    @classmethod
    def disabled(cls, reason: str) -> NodeIsolation:
        return cls(
            IsolationProbe(NONE, reason, False, "none", (), False, False, False),
            containers=ContainerRuntime.none(reason),
        )

    def cgroup_for(self, task_id: str) -> TaskCgroup | None:
        if self.layout.version == "none":
            return None
        return TaskCgroup.for_task(self.layout, self.key, task_id)


__all__ = ["FULL", "NONE", "PARTIAL", "IsolationProbe", "NodeIsolation", "TaskCgroup", "probe"]
