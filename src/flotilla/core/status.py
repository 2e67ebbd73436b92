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
# The statuses of runs that hold nodes, as stored (for `status IN (...)` queries).
HOLDING = [s.value for s in RunStatus if s.holds_resources()]

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


class NodeState(StrEnum):
    """A node's lifecycle. Only `ready` nodes get new work; `cordoned` keeps its
    work, `draining` has its work stopped and requeued, then becomes `cordoned`."""

    PROVISIONING = "provisioning"
    READY = "ready"
    CORDONED = "cordoned"
    DRAINING = "draining"
    # A node on another host whose agent stopped answering: no new work; its tasks
    # keep their last known state until it answers again or is declared failed.
    UNREACHABLE = "unreachable"
    FAILED = "failed"
    TERMINATED = "terminated"

    def is_schedulable(self) -> bool:
        return self == NodeState.READY

    def evicts_work(self) -> bool:
        """Work on a node in this state must be stopped and requeued elsewhere."""
        return self in (NodeState.DRAINING, NodeState.FAILED, NodeState.TERMINATED)

    def is_gone(self) -> bool:
        return self == NodeState.TERMINATED


_LOST = {NodeState.UNREACHABLE, NodeState.FAILED, NodeState.TERMINATED}
NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    NodeState.PROVISIONING: frozenset({NodeState.READY, NodeState.FAILED, NodeState.TERMINATED}),
    NodeState.READY: frozenset({NodeState.CORDONED, NodeState.DRAINING, *_LOST}),
    NodeState.CORDONED: frozenset({NodeState.READY, NodeState.DRAINING, *_LOST}),
    NodeState.DRAINING: frozenset({NodeState.READY, NodeState.CORDONED, *_LOST}),
    NodeState.UNREACHABLE: frozenset(
        {NodeState.READY, NodeState.CORDONED, NodeState.DRAINING, *_LOST} - {NodeState.UNREACHABLE}
    ),
    # A failed node on another host whose agent answers again is admitted anew
    # (`provisioning`) once what still ran there has been stopped.
    NodeState.FAILED: frozenset({NodeState.PROVISIONING, NodeState.TERMINATED}),
    NodeState.TERMINATED: frozenset(),
}


def can_switch_node(current: NodeState, new: NodeState) -> bool:
    return new in NODE_TRANSITIONS[current]
