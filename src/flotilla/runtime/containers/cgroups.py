"""Where a task's containers go in the cgroup tree, and removing what podman makes
there; used by `task.py`.

`--cgroup-parent` is the task's own group: in the memory hierarchy where the
hierarchies' paths differ (on this machine the agent's memory group is deeper than
its others), so the task's memory limit holds for all its containers together;
with cgroup v2, or where the paths agree, the containers are inside the task's
group everywhere (its cpu and pids limits and `cgroup.kill` reach them too).
Podman then makes that path in every mounted hierarchy, with `conmon/` in it, and
removes only the containers' own groups: `remove` takes conmon's and the
directories that did not exist before the first container, and leaves the task's
own group to the task's isolation.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from flotilla.runtime.isolation.cgroups import UNIFIED, TaskCgroup, cgroup_mounts


class ContainerCgroups:
    """The task's containers' place in the cgroup tree, and removing what podman
    made there (it makes the parent in every hierarchy, and `conmon/` in it)."""

    def __init__(
        self, cgroup: TaskCgroup | None, mounts: dict[str, tuple[str, Path]] | None = None
    ) -> None:
        mounts = cgroup_mounts() if mounts is None else mounts
        self.roots = sorted({mountpoint for _, mountpoint in mounts.values()})
        self.parent = cgroup_parent(cgroup, mounts)
        self.made: dict[Path, Path] = {}  # hierarchy -> the highest directory podman made

    def note_existing(self) -> None:
        if self.parent is None:
            return
        for root in self.roots:
            path = root / self.parent.lstrip("/")
            missing = [p for p in [path, *path.parents] if p.is_relative_to(root) and p != root]
            absent = [p for p in missing if not p.exists()]
            if absent:
                self.made[root] = absent[-1]

    def remove(self, timeout: float = 5.0) -> str:
        """After the task's last container. Never raises; a note if not all went."""
        if self.parent is None:
            return ""
        paths = {root: root / self.parent.lstrip("/") for root in self.roots}
        left = _remove_when_empty([p / "conmon" for p in paths.values()], timeout)
        for root, path in paths.items():
            if (top := self.made.get(root)) is None or path / "conmon" in left:
                continue  # the task's own group: its isolation removes it
            for directory in [path, *path.parents]:
                if not directory.is_relative_to(top) or not _rmdir(directory):
                    break
        return f"containers: cgroups not removed: {sorted(map(str, left))}" if left else ""


def cgroup_parent(cgroup: TaskCgroup | None, mounts: dict[str, tuple[str, Path]]) -> str | None:
    """The task's group as a path inside its hierarchy (podman's --cgroup-parent)."""
    if cgroup is None:
        return None
    for hierarchy in ("memory", UNIFIED, *cgroup.dirs):
        if hierarchy in cgroup.dirs and hierarchy in mounts:
            directory, mountpoint = cgroup.dirs[hierarchy], mounts[hierarchy][1]
            if directory.is_relative_to(mountpoint):
                return "/" + str(directory.relative_to(mountpoint))
    return None


def _remove_when_empty(directories: list[Path], timeout: float) -> set[Path]:
    """conmon leaves its groups a moment after its container: wait for that, then
    kill what is still there (the conmons of this task's containers) and wait 1 s
    more. Returns the directories that are still there."""
    left, deadline, killed = set(directories), time.monotonic() + timeout, False
    while left := {d for d in left if not _rmdir(d)}:
        if time.monotonic() > deadline:
            if killed:
                break
            for directory in left:
                with contextlib.suppress(OSError, ValueError):
                    for pid in (directory / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
            deadline, killed = time.monotonic() + 1.0, True
        time.sleep(0.01)
    return left


def _rmdir(directory: Path) -> bool:
    """Never raises: the cleanup must not cost the task its recorded result."""
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False  # busy (members, child groups), or not ours to remove
    return True
