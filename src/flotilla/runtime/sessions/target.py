"""The running task an SSH session goes into, as a process on this machine."""

from __future__ import annotations

from dataclasses import dataclass

from flotilla.runtime import proctree
from flotilla.runtime.procs import is_same_process, process_start_ticks


@dataclass(frozen=True)
class Target:
    """A running task a shell may be opened in."""

    label: str  # `job train run 12 rank 1`: what users are told
    run_id: str
    rank: int
    pid: int  # the task's leading process: its environment and directory are the shell's
    start_ticks: int  # with the pid, the process's identity (pids are reused)
    gpus: tuple[int, ...]

    def is_running(self) -> bool:
        return is_same_process(self.pid, self.start_ticks)


def task_target(
    label: str, run_id: str, rank: int, pid: int, gpus: tuple[int, ...]
) -> Target | None:
    """The target for the task whose leading process is `pid`, if that process is
    still the task's (not a stranger that reused the pid)."""
    ticks = process_start_ticks(pid)
    if ticks is None or not is_task_process(pid, run_id, rank):
        return None
    return Target(label, run_id, rank, pid, ticks, gpus)


def is_task_process(pid: int, run_id: str, rank: int) -> bool:
    """Whether `pid` still is the task's process, not a stranger that reused the pid."""
    env = proctree.environment(pid)
    return (
        env is not None
        and env.get("FLOTILLA_RUN_ID") == run_id
        and env.get("FLOTILLA_RANK") == str(rank)
    )
