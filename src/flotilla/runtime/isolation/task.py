"""One task's isolation, applied by its supervisor (runtime/supervisor.py).

Order, all before any of the task's code runs: the account exists; the task's
directories get their owners; the cgroup is made, limited and recorded in the task
directory (so an agent that finds the supervisor gone can still kill the tree);
the supervisor enters the task's private mount namespace. Then every process of
the task, setup included, is started with `confinement` (cgroup + credentials),
and `cleanup` kills what is left in the cgroup and removes it.

Ownership: the task directory stays root's (0755: the user may list, not write), so
the files the supervisor and the server trust (result.json, supervisor.json, the
logs the server reads as root) cannot be replaced or turned into symlinks by the
task. What the task writes lives in directories the user owns (0700): the first
level below the task directory of its working directory, git checkouts and
secret files (`root/` on the local backend), its home, and the directories in the
spec's `keep` (the run's checkpoint dir, which every attempt of the run reuses).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from flotilla.runtime.isolation import NodeIsolation
from flotilla.runtime.isolation.accounts import ensure_account
from flotilla.runtime.isolation.launch import Confinement, Credentials
from flotilla.runtime.isolation.mounts import closed_ancestor, hide
from flotilla.runtime.taskspec import TaskFiles, TaskSpec

HOME = "home"  # the task's own home, in its task directory, when run_as has none


class IsolationFailed(Exception):
    """The node said it can isolate, but could not for this task: the task must
    not run unconfined."""


class TaskIsolation:
    def __init__(self, spec: TaskSpec, node: NodeIsolation, signals: tuple[int, ...]) -> None:
        self.spec = spec
        self.files = TaskFiles(spec.task_dir)
        root = node.probe.root
        wants_cgroup = spec.run_as is not None or spec.limits is not None
        self.cgroup = node.cgroup_for(spec.task_id) if root and wants_cgroup else None
        run_as = spec.run_as if root else None
        self.credentials = (
            Credentials(run_as.uid, run_as.gid, tuple(g for _, g in run_as.groups))
            if run_as is not None
            else None
        )
        self.home = (run_as.home or str(self.files.dir / HOME)) if run_as is not None else None
        self.namespace = root and node.probe.mount_namespace
        self.hide = spec.hide if self.namespace else []
        self.signals = signals
        self.notes = self._notes(node)

    def _notes(self, node: NodeIsolation) -> list[str]:
        """What was asked and cannot be done here: said in the supervisor log."""
        notes = []
        if self.spec.run_as is not None and self.credentials is None:
            notes.append(f"runs as the agent's user, not {self.spec.run_as.user}")
        if self.spec.limits is not None and self.cgroup is None:
            notes.append("no cgroup: limits not applied")
        if self.spec.hide and not self.hide:
            notes.append("nothing hidden")
        return [f"isolation: {node.probe.summary()}: {n}" for n in notes]

    @property
    def active(self) -> bool:
        return self.cgroup is not None or self.credentials is not None

    @property
    def confinement(self) -> Confinement:
        procs = tuple(self.cgroup.procs_files) if self.cgroup is not None else ()
        return Confinement(procs, self.credentials, self.signals)

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """The task's environment: the account's name and home, not the server's."""
        if self.spec.run_as is None or self.credentials is None or self.home is None:
            return env
        name = self.spec.run_as.user
        return {**env, "HOME": self.home, "USER": name, "LOGNAME": name}

    # -- before setup ------------------------------------------------------------

    def prepare(self) -> None:
        """Raises IsolationFailed."""
        try:
            if self.spec.run_as is not None and self.credentials is not None:
                ensure_account(self.spec.run_as)
                self._own_directories()
            if self.cgroup is not None:
                self.cgroup.create(self.spec.limits)
                self.cgroup.save(self.files.cgroup)
            if paths := self._paths_to_hide():
                hide(paths, keep=[str(self.files.dir), *self.spec.keep])
        except Exception as e:
            raise IsolationFailed(f"cannot isolate the task: {e}") from e

    def _paths_to_hide(self) -> list[str]:
        paths = list(self.hide)
        if self.credentials is not None and self.namespace:
            c = self.credentials
            for kept in [str(self.files.dir), *self.spec.keep]:
                closed = closed_ancestor(kept, c.uid, (c.gid, *c.groups))
                paths += [closed] if closed else []
        return paths

    def _own_directories(self) -> None:
        assert self.credentials is not None and self.home is not None
        os.chmod(self.files.dir, 0o755)  # noqa: S103 - root's: the user may list, not write
        paths = [self.spec.workdir, self.home, *(f.path for f in self.spec.files)]
        paths += [g.dest for g in self.spec.git]
        for top in _first_levels(self.files.dir, paths):
            _make_owned(top, self.credentials)
        home = Path(self.home)
        if not home.is_relative_to(self.files.dir) and not home.exists():
            _make_owned(home, self.credentials)  # an existing home is left as it is
        for kept in self.spec.keep:  # the run's checkpoint dir: the same for every attempt
            _make_owned(Path(kept), self.credentials)

    # -- after the task ----------------------------------------------------------

    def kill(self) -> None:
        if self.cgroup is not None:
            self.cgroup.kill()

    def cleanup(self) -> str:
        """Kill what is left and remove the cgroup; a note if it could not."""
        if self.cgroup is None:
            return ""
        try:
            if self.cgroup.remove():
                return ""
        except OSError as e:
            return f"cgroup not removed: {e}"
        return f"cgroup not removed (still busy): {self.cgroup.pids()}"


def _first_levels(task_dir: Path, paths: Iterable[str]) -> list[Path]:
    """For each path inside the task directory, its first level below it."""
    tops = []
    for path in paths:
        relative = Path(path)
        if relative.is_relative_to(task_dir) and relative != task_dir:
            tops.append(task_dir / relative.relative_to(task_dir).parts[0])
    return sorted(set(tops))


def _make_owned(path: Path, credentials: Credentials) -> None:
    """A directory of the user's, 0700; made by root where the parent is root's
    (a fresh mkdir: nothing the user could have swapped in)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, credentials.uid, credentials.gid)
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
