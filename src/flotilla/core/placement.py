"""Gang placement: put every task of a run on nodes at once, or none.

Input is a snapshot of nodes with their free GPUs; output is one assignment per
task or the reason why the run must wait. Pure: the scheduler reconciler loads the
snapshot, calls `place_gang`, and applies the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flotilla.core.units import GpuRequest


@dataclass
class NodeCapacity:
    name: str
    address: str
    gpu_type: str | None  # the node's GPU model, e.g. "H100"; None if it has none
    free_gpus: list[int]  # indices of GPUs not held by any run
    total_gpus: int
    schedulable: bool = True
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskRequest:
    tasks: int  # the run's scale: how many tasks, each on its own node share
    gpu: GpuRequest | None


@dataclass(frozen=True)
class TaskAssignment:
    rank: int
    node: str
    address: str
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Placement:
    assignments: tuple[TaskAssignment, ...]


@dataclass(frozen=True)
class Unplaceable:
    reason: str


def _gpu_type_matches(node: NodeCapacity, request: GpuRequest) -> bool:
    return request.type is None or (node.gpu_type or "").upper() == request.type.upper()


def place_gang(request: TaskRequest, nodes: list[NodeCapacity]) -> Placement | Unplaceable:
    """Assign each of `request.tasks` tasks to a node with enough free GPUs.

    Several tasks may share a node when it has room (the local backend has one
    node); the lowest GPU indices are taken first so that placements are stable.
    The snapshot in `nodes` is not modified.
    """
    need = request.gpu.count if request.gpu else 0
    usable = [n for n in nodes if n.schedulable]
    if request.gpu:
        usable = [n for n in usable if _gpu_type_matches(n, request.gpu)]
    if not usable:
        return Unplaceable(_no_node_reason(request, nodes))
    free = {n.name: list(n.free_gpus) for n in usable}
    assignments: list[TaskAssignment] = []
    for rank in range(request.tasks):
        # Fill the node with the fewest free GPUs that still fits (best fit), so
        # that big holes stay open for big runs.
        fitting = [n for n in usable if len(free[n.name]) >= need]
        if not fitting:
            return Unplaceable(_capacity_reason(request, usable))
        node = min(fitting, key=lambda n: (len(free[n.name]), n.name))
        taken, free[node.name] = free[node.name][:need], free[node.name][need:]
        assignments.append(TaskAssignment(rank, node.name, node.address, tuple(taken)))
    return Placement(tuple(assignments))


def _no_node_reason(request: TaskRequest, nodes: list[NodeCapacity]) -> str:
    if request.gpu and request.gpu.type:
        types = sorted({n.gpu_type for n in nodes if n.gpu_type})
        have = f"available types: {', '.join(types)}" if types else "no node has GPUs"
        return f"no schedulable node has {request.gpu.type} GPUs ({have})"
    if request.gpu:
        return "no schedulable node has GPUs"
    return "no schedulable node"


def _capacity_reason(request: TaskRequest, usable: list[NodeCapacity]) -> str:
    assert request.gpu is not None
    wanted = request.gpu.count * request.tasks
    free = sum(len(n.free_gpus) for n in usable)
    total = sum(n.total_gpus for n in usable)
    kind = f"{request.gpu.type} " if request.gpu.type else ""
    tasks = f" ({request.tasks} tasks x {request.gpu.count})" if request.tasks > 1 else ""
    if wanted > total:
        return f"needs {wanted} {kind}GPUs{tasks}; only {total} exist on schedulable nodes"
    return f"waiting for {wanted} {kind}GPUs{tasks}: {free} of {total} free"
