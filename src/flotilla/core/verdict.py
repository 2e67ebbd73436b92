"""What a run's status should be, given its tasks. Pure; called by the supervision
reconciler whenever a task changes."""

from __future__ import annotations

from dataclasses import dataclass

from flotilla.core.status import RunStatus, TaskStatus


@dataclass(frozen=True)
class TaskView:
    rank: int
    status: TaskStatus
    exit_code: int | None = None
    message: str = ""


@dataclass(frozen=True)
class RunVerdict:
    status: RunStatus | None  # None: leave the run's status as it is
    reason: str = ""
    exit_code: int | None = None
    stop_others: str | None = None  # a reason to stop the rest of the gang


def judge_run(current: RunStatus, tasks: list[TaskView], stop_requested: bool) -> RunVerdict:
    failed = [t for t in tasks if t.status == TaskStatus.FAILED]
    lost = [t for t in tasks if t.status == TaskStatus.LOST]
    if all(t.status.is_finished() for t in tasks):
        return _finished(tasks, failed, lost, stop_requested)
    if (failed or lost) and not stop_requested:
        # Gang semantics: the run cannot succeed without every member.
        first = (lost or failed)[0]
        return RunVerdict(None, stop_others=f"rank {first.rank} {_describe(first)}")
    started = all(t.status == TaskStatus.RUNNING or t.status.is_finished() for t in tasks)
    if started and current in (RunStatus.STARTING, RunStatus.PROVISIONING):
        return RunVerdict(RunStatus.RUNNING, "running")
    return RunVerdict(None)


def _finished(
    tasks: list[TaskView], failed: list[TaskView], lost: list[TaskView], stop_requested: bool
) -> RunVerdict:
    if lost:
        first = lost[0]
        return RunVerdict(RunStatus.ERROR, f"rank {first.rank} {_describe(first)}")
    if failed:
        first = failed[0]
        return RunVerdict(
            RunStatus.FAILED, f"rank {first.rank} {_describe(first)}", first.exit_code
        )
    leader = min(tasks, key=lambda t: t.rank)
    if stop_requested or any(t.status == TaskStatus.STOPPED for t in tasks):
        return RunVerdict(RunStatus.STOPPED, "stopped", leader.exit_code)
    return RunVerdict(RunStatus.SUCCEEDED, "exit code 0", 0)


def _describe(task: TaskView) -> str:
    if task.status == TaskStatus.LOST:
        return f"lost: {task.message}" if task.message else "lost"
    if task.exit_code is None:
        return f"failed: {task.message}" if task.message else "failed"
    return f"exited with code {task.exit_code}"
