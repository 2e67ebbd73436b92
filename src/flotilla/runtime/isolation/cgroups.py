"""Per-task cgroups: found, created, limited, killed and removed by the supervisor.

Layout: under the cgroup the agent itself is in (per hierarchy on cgroup v1), one
group per agent (`flotilla-<key>`: two agents on one machine never share names) and
in it one group per task, named by task id. Only the task's processes join it: the
supervisor stays outside, so `cgroup.kill` and an OOM kill under the task's memory
limit never take the supervisor, which must survive to write the result.

Pure cgroup v2: limits and `cgroup.kill` in one hierarchy. Hybrid (v1 controllers
plus the unified v2 mount, as on the test machine): limits through the v1
hierarchies, the kill through the unified group (`cgroup.kill` is a core v2 file,
needing no controller). v1 only: limits, and a kill by signalling every member
until the group is empty.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flotilla.runtime.isolation.devices import deny_rules, nvidia_minors
from flotilla.runtime.taskspec import Limits

LIMIT_CONTROLLERS = ("memory", "cpu", "pids")
# The v1 controller that fences a task's GPUs (`devices.py`); on pure v2 that takes a
# BPF program, which the agent does not load: GPUs are then not fenced (the probe
# says so).
DEVICES = "devices"
UNIFIED = ""  # the key of the v2 hierarchy in `CgroupLayout.bases`
CFS_PERIOD_US = 100_000
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass(frozen=True)
class CgroupLayout:
    """Where this process's cgroups are: hierarchy key (a v1 controller name, or
    UNIFIED) -> the directory of the group this process is in."""

    version: str  # "v2" | "hybrid" | "v1" | "none"
    bases: dict[str, Path] = field(default_factory=dict)
    controllers: tuple[str, ...] = ()  # limits that can be enforced
    kill: bool = False  # `cgroup.kill` exists in the v2 group


def discover(proc: Path = Path("/proc/self")) -> CgroupLayout:
    """Read /proc/self/cgroup and mountinfo: which hierarchies are mounted where."""
    mounts = _cgroup_mounts(proc / "mountinfo")
    bases: dict[str, Path] = {}
    try:
        lines = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return CgroupLayout("none")
    for line in lines:
        _, names, path = line.split(":", 2)
        # A co-mounted v1 hierarchy is named "cpu,cpuacct": each controller is a key.
        for key in names.split(",") if names else [UNIFIED]:
            if key not in mounts:
                continue
            root, mountpoint = mounts[key]
            relative = path[len(root) :] if root != "/" and path.startswith(root) else path
            bases[key] = mountpoint / relative.lstrip("/")
    v1 = {c: bases[c] for c in LIMIT_CONTROLLERS if c in bases}
    if v1:
        version = "hybrid" if UNIFIED in bases else "v1"
        kept = {**v1, **({UNIFIED: bases[UNIFIED]} if UNIFIED in bases else {})}
        if DEVICES in bases:
            kept[DEVICES] = bases[DEVICES]
        controllers = tuple(v1)
    elif UNIFIED in bases:
        version = "v2"
        kept = {UNIFIED: bases[UNIFIED]}
        controllers = _v2_controllers(bases[UNIFIED])
    else:
        return CgroupLayout("none")
    kill = UNIFIED in kept and (kept[UNIFIED] / "cgroup.kill").exists()
    return CgroupLayout(version, kept, controllers, kill)


def kill_supported(layout: CgroupLayout) -> bool:
    """Whether groups made below the v2 base have `cgroup.kill` (Linux >= 5.14).
    The root group never has the file, so a child is made to look (root only)."""
    base = layout.bases.get(UNIFIED)
    if base is None:
        return False
    if (base / "cgroup.kill").exists():
        return True
    child = base / f"flotilla-probe-{os.getpid()}"
    try:
        child.mkdir()
    except OSError:
        return False
    try:
        return (child / "cgroup.kill").exists()
    finally:
        child.rmdir()


def cgroup_mounts(proc: Path = Path("/proc/self")) -> dict[str, tuple[str, Path]]:
    """Every mounted hierarchy, limits or not (podman makes its groups in all of
    them): key -> (root of the mount inside the hierarchy, mount point)."""
    return _cgroup_mounts(proc / "mountinfo")


def _cgroup_mounts(mountinfo: Path) -> dict[str, tuple[str, Path]]:
    """Hierarchy key -> (root of the mount inside the hierarchy, mount point)."""
    found: dict[str, tuple[str, Path]] = {}
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mountpoint, fstype = fields[3], Path(fields[4]), tail[0]
        if fstype == "cgroup2":
            found.setdefault(UNIFIED, (root, mountpoint))
        elif fstype == "cgroup":
            for name in tail[2].split(","):  # super options: rw,cpu,cpuacct
                found.setdefault(name, (root, mountpoint))
    return found


def _v2_controllers(base: Path) -> tuple[str, ...]:
    """The limit controllers that groups below `base` get: those enabled in its
    subtree_control (a group with processes, the agent's, cannot enable more)."""
    try:
        enabled = (base / "cgroup.subtree_control").read_text().split()
    except OSError:
        return ()
    return tuple(c for c in LIMIT_CONTROLLERS if c in enabled)


def agent_key(identity: str) -> str:
    """The per-agent group's name, from something unique to the agent (its lock)."""
    return "flotilla-" + hashlib.sha1(identity.encode()).hexdigest()[:12]  # noqa: S324


def group_name(task_id: str) -> str:
    """A task id as a cgroup directory name (hashed if it is not a safe name)."""
    if _NAME.match(task_id) and task_id not in (".", ".."):
        return task_id
    return "task-" + hashlib.sha1(task_id.encode()).hexdigest()[:20]  # noqa: S324


class TaskCgroup:
    """One task's group in every hierarchy of the layout."""

    def __init__(self, dirs: dict[str, Path], version: str) -> None:
        self.dirs = dirs
        self.version = version

    @classmethod
    def for_task(cls, layout: CgroupLayout, key: str, task_id: str) -> TaskCgroup:
        """Where the task's group is (found again from the task id after a restart)."""
        dirs = {h: base / key / group_name(task_id) for h, base in layout.bases.items()}
        return cls(dirs, layout.version)

    def to_dict(self) -> dict[str, object]:
        return {"version": self.version, "dirs": {h: str(d) for h, d in self.dirs.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> TaskCgroup:
        dirs = data.get("dirs")
        assert isinstance(dirs, dict)
        return cls({str(h): Path(str(d)) for h, d in dirs.items()}, str(data.get("version")))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: Path) -> TaskCgroup | None:
        with contextlib.suppress(OSError, ValueError, AssertionError):
            return cls.from_dict(json.loads(path.read_text()))
        return None

    @property
    def procs_files(self) -> list[str]:
        """What a process writes "0" into to join the group (before it execs)."""
        return [str(d / "cgroup.procs") for d in self.dirs.values()]

    # -- lifecycle ---------------------------------------------------------------

    def create(self, limits: Limits | None, gpu_minors: Mapping[int, int] | None = None) -> None:
        """Make the group (and the agent's group above it) and apply the limits;
        `gpu_minors` (index -> device minor): the node's GPUs, by default as
        `devices.gpu_minors` finds them. Raises OSError if a hierarchy refuses."""
        for hierarchy, directory in self.dirs.items():
            for attempt in range(3):  # another task's cleanup may remove the agent's group
                if self.version == "v2" and hierarchy == UNIFIED:
                    _enable_v2_controllers(directory.parent)
                try:
                    directory.mkdir(parents=True, exist_ok=True)
                    break
                except FileNotFoundError:
                    if attempt == 2:
                        raise
        if limits is not None:
            self._limit(limits)
            if limits.gpus is not None and DEVICES in self.dirs:
                minors = gpu_minors if gpu_minors is not None else nvidia_minors()
                for rule in deny_rules(limits.gpus, minors):
                    _write(self.dirs[DEVICES] / "devices.deny", rule)

    def _limit(self, limits: Limits) -> None:
        if self.version == "v2":
            d = self.dirs[UNIFIED]
            if limits.memory_bytes is not None:
                _write(d / "memory.max", str(limits.memory_bytes))
                _write_if_present(d / "memory.swap.max", "0")  # the limit is RAM + swap
                _write_if_present(d / "memory.oom.group", "1")  # an OOM ends the whole task
            if limits.cpus is not None:
                _write(d / "cpu.max", f"{_quota(limits.cpus)} {CFS_PERIOD_US}")
            if limits.pids is not None:
                _write(d / "pids.max", str(limits.pids))
            return
        if limits.memory_bytes is not None and "memory" in self.dirs:
            d = self.dirs["memory"]
            _write(d / "memory.limit_in_bytes", str(limits.memory_bytes))
            # memsw >= limit_in_bytes, so set after it; absent without swap accounting.
            _write_if_present(d / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
        if limits.cpus is not None and "cpu" in self.dirs:
            _write(self.dirs["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(_quota(limits.cpus)))
        if limits.pids is not None and "pids" in self.dirs:
            _write(self.dirs["pids"] / "pids.max", str(limits.pids))

    def pids(self) -> list[int]:
        """Every process in the group, in any hierarchy."""
        found: set[int] = set()
        for directory in self.dirs.values():
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        return sorted(found)

    def kill(self) -> None:
        """SIGKILL every process in the group, `setsid` and double-forked ones too."""
        unified = self.dirs.get(UNIFIED)
        if unified is not None and (unified / "cgroup.kill").exists():
            with contextlib.suppress(FileNotFoundError):
                _write(unified / "cgroup.kill", "1")
            return
        # No cgroup.kill (v1 only): signal the members until none is left; pids.max
        # bounds how many a fork loop can add meanwhile.
        deadline = time.monotonic() + 5.0
        while (members := self.pids()) and time.monotonic() < deadline:
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.002)

    def remove_if_empty(self) -> None:
        """Remove the directories if nothing runs there (a supervisor that died
        before its cleanup); never kills."""
        for directory in self.dirs.values():
            with contextlib.suppress(OSError):
                if _rmdir(directory):
                    _rmdir(directory.parent)

    def remove(self, timeout: float = 5.0) -> bool:
        """Kill what is left, wait until the group is empty, remove its directories
        (and the agent's group once it has no other task). True if all are gone."""
        self.kill()
        deadline = time.monotonic() + timeout
        remaining = dict(self.dirs)
        while remaining:
            for hierarchy, directory in list(remaining.items()):
                if _rmdir(directory):
                    del remaining[hierarchy]
                    _rmdir(directory.parent)  # EBUSY while other tasks run: fine
            if not remaining or time.monotonic() > deadline:
                break
            time.sleep(0.002)  # the killed processes are still exiting
        return not remaining


def _enable_v2_controllers(parent: Path) -> None:
    """Make the limit controllers available to groups in `parent` (the agent's
    group), as far as its own parent allows."""
    parent.mkdir(exist_ok=True)
    try:
        available = (parent / "cgroup.controllers").read_text().split()
        enabled = (parent / "cgroup.subtree_control").read_text().split()
    except OSError:
        return
    wanted = [c for c in LIMIT_CONTROLLERS if c in available and c not in enabled]
    if wanted:
        _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in wanted))


def _rmdir(directory: Path) -> bool:
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


def _quota(cpus: float) -> int:
    return max(1000, int(cpus * CFS_PERIOD_US))  # the kernel's minimum quota is 1 ms


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _write_if_present(path: Path, value: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        _write(path, value)
