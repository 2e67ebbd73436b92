"""Run and task statuses and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    PROVISIONING = "provisioning"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    PREEMPTED = "preempted"
    ERROR = "error"

    def is_finished(self) -> bool:
        return self in _FINISHED

    def is_active(self) -> bool:
        return not self.is_finished()

    def holds_resources(self) -> bool:
        return self in (RunStatus.PROVISIONING, RunStatus.STARTING, RunStatus.RUNNING)


_FINISHED = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED, RunStatus.PREEMPTED, RunStatus.ERROR}
)
_ACTIVE = frozenset(RunStatus) - _FINISHED

# A run only moves forward, except that a failed attempt may go back to pending
# (retries, requeue after preemption).
ALLOWED: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.PENDING: frozenset(
        {RunStatus.PROVISIONING, RunStatus.STARTING, RunStatus.STOPPED, RunStatus.ERROR}
    ),
    RunStatus.PROVISIONING: frozenset({RunStatus.STARTING, RunStatus.PENDING} | _FINISHED),
    RunStatus.STARTING: frozenset({RunStatus.RUNNING, RunStatus.PENDING} | _FINISHED),
    RunStatus.RUNNING: frozenset({RunStatus.PENDING} | _FINISHED),
    RunStatus.FAILED: frozenset({RunStatus.PENDING}),
    RunStatus.PREEMPTED: frozenset({RunStatus.PENDING}),
    RunStatus.SUCCEEDED: frozenset(),
    RunStatus.STOPPED: frozenset(),
    RunStatus.ERROR: frozenset(),
}


def can_switch(current: RunStatus, new: RunStatus) -> bool:
    return new in ALLOWED[current]


class TaskStatus(StrEnum):
    PENDING = "pending"
    STARTING = "starting"  # launched: cloning, start script
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"

    def is_finished(self) -> bool:
        return self in (
            TaskStatus.SUCCEEDED,
            TaskStatus.FAILED,
            TaskStatus.STOPPED,
            TaskStatus.LOST,
        )


def saturn_pod_status(status: TaskStatus, stop_requested: bool) -> str:
    """Saturn's PodStatus vocabulary: pending, running, error, stopping, stopped,
    completed, unknown."""
    if not status.is_finished() and stop_requested and status != TaskStatus.PENDING:
        return "stopping"
    return {
        TaskStatus.PENDING: "pending",
        TaskStatus.STARTING: "pending",
        TaskStatus.RUNNING: "running",
        TaskStatus.SUCCEEDED: "completed",
        TaskStatus.FAILED: "error",
        TaskStatus.STOPPED: "stopped",
        TaskStatus.LOST: "error",
    }[status]
