"""From a snapshot of the store to a placement plan, through the pure scheduler
core: builds the topology index of schedulable nodes, turns pending runs into
gang shapes (`core.packing`), runs one queue cycle (`core.queue.schedule`) and
maps the chosen nodes back to tasks and GPU indices.

No I/O: the scheduler reconciler loads the snapshot, calls `plan`, and applies it.
A run never goes to a node it is barred from (`Snapshot.barred`: a node that cannot
isolate tasks and does not trust the run's user, `services/fleets/node_trust.py`).
GPU types are indexed per capacity kind: spot nodes form their own pool (`H100
spot`), used only by runs that asked for spot, so on-demand work never lands on
capacity that can be reclaimed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flotilla.core.packing import Shape, assign, wider_shapes
from flotilla.core.queue import Policy, QueuedRun, RunningRun, held_gpus, quota_reason, schedule
from flotilla.core.topology import CapacityIndex, Node, TypeIndex
from flotilla.server.db.models import NodeModel
from flotilla.server.services.fleets.nodes import healthy_gpus
from flotilla.server.services.runs.queue_head import Waiting
from flotilla.server.services.runs.scheduling import Barred, Snapshot

DEFAULT_NODE_GPUS = 8


@dataclass(frozen=True)
class TaskPlacement:
    node: str
    address: str
    gpus: tuple[int, ...]


@dataclass
class Plan:
    placements: dict[str, list[TaskPlacement]] = field(default_factory=dict)  # by rank
    reasons: dict[str, str] = field(default_factory=dict)
    preempt: dict[str, str] = field(default_factory=dict)
    waiting_for_capacity: bool = False  # a fleet could help


def capacity_kind(gpu_type: str, spot: bool) -> str:
    return f"{gpu_type.upper()} spot" if spot else gpu_type.upper()


def plan(
    snapshot: Snapshot,
    policy: Policy,
    usage: dict[str, float],
    max_misses: int | None = None,
) -> Plan:
    out = Plan()
    schedulable = snapshot.schedulable()
    index = CapacityIndex(_topology_node(n, snapshot) for n in schedulable if _has_gpus(n))
    queue: list[QueuedRun] = []
    shapes: dict[str, Shape] = {}
    running = _running(snapshot)
    held = held_gpus(running)
    for waiting in snapshot.pending:
        request = waiting.spec.resources.gpu_request()
        barred = snapshot.barred.get(waiting.run.id)
        if request is None:
            _place_without_gpus(waiting, schedulable, barred, out)
            continue
        spot = waiting.spec.use_spot_instance
        kind = _kind_for(request.type, spot, index)
        type_index = index.index(kind) if kind else None
        if kind is None or type_index is None:
            # A quota comes first: capacity would not start it (nor should a fleet
            # grow for it).
            gpus = request.count * len(waiting.tasks)
            owner, project = waiting.recipe.owner, waiting.spec.project
            held_back = quota_reason(owner, project, gpus, held, policy)
            out.reasons[waiting.run.id] = held_back or _no_type_reason(request.type, spot, index)
            out.waiting_for_capacity |= held_back is None
            continue
        shape = _shape(len(waiting.tasks), request.count, type_index)
        shapes[waiting.run.id] = shape
        queue.append(
            QueuedRun(
                id=waiting.run.id,
                user=waiting.recipe.owner,
                project=waiting.spec.project,
                nodes=shape.nodes,
                gpus_per_node=shape.gpus_per_node,
                gpu_type=kind,
                priority=waiting.spec.priority,
                queued_at=waiting.run.queued_at.timestamp(),
                spot=spot,
                barred=barred.nodes if barred else frozenset(),
                barred_reason=barred.reason if barred else "",
            )
        )
    decision = schedule(index, queue, running, usage, policy, max_misses=max_misses)
    free = {n.name: snapshot.free_gpus(n) for n in schedulable}
    by_id = {w.run.id: w for w in snapshot.pending}
    for run_id, nodes in decision.placed.items():
        shape = shapes[run_id]
        ranks = assign(len(by_id[run_id].tasks), nodes, shape.tasks_per_node)
        out.placements[run_id] = [
            _take(snapshot.nodes[name], free, shape.gpus_per_task) for name in ranks
        ]
    out.reasons.update(decision.reasons)
    out.preempt = decision.preempt
    out.waiting_for_capacity |= bool(decision.reasons)
    return out


def _has_gpus(node: NodeModel) -> bool:
    return bool(node.gpu_type) and bool(healthy_gpus(node))


def _topology_node(node: NodeModel, snapshot: Snapshot) -> Node:
    labels = node.labels or {}
    assert node.gpu_type is not None
    # Group names are made unique by their path: a provider may reuse "leaf-1" in
    # every partition, and the index must not merge those.
    partition = str(labels.get("partition") or node.name)
    spine = f"{partition}/{labels.get('spine') or node.name}"
    leaf = f"{spine}/{labels.get('leaf') or node.name}"
    return Node(
        name=node.name,
        gpu_type=capacity_kind(node.gpu_type, node.spot),
        gpu_count=len(healthy_gpus(node)),
        free=len(snapshot.free_gpus(node)),
        partition=partition,
        spine=spine,
        leaf=leaf,
        nvlink=f"{leaf}/{labels.get('nvlink') or node.name}",
        spot=node.spot,
    )


def _kind_for(gpu_type: str | None, spot: bool, index: CapacityIndex) -> str | None:
    if gpu_type:
        return capacity_kind(gpu_type, spot)
    # "any GPU": the kind with the most free GPUs right now.
    kinds = [k for k in index.types if k.endswith(" SPOT") == spot]
    return max(kinds, key=lambda k: index.types[k].free_total, default=None)


def _shape(tasks: int, gpus_per_task: int, index: TypeIndex) -> Shape:
    """The tightest packing that fits now, else the tightest (the run waits for it)."""
    shapes = wider_shapes(tasks, gpus_per_task, index.max_gpus or DEFAULT_NODE_GPUS)
    for candidate in shapes:
        if candidate.gpus_per_node > index.max_gpus:
            break
        if candidate.nodes == 1 and index.best_single(candidate.gpus_per_node) is not None:
            return candidate
        if candidate.nodes > 1 and index.best_gang(candidate.nodes, candidate.gpus_per_node):
            return candidate
    return shapes[0]


def _running(snapshot: Snapshot) -> list[RunningRun]:
    out = []
    for placed in snapshot.placed:
        per_node: dict[str, int] = {}
        for task in placed.tasks:
            if task.node:
                per_node[task.node] = per_node.get(task.node, 0) + len(task.gpus or [])
        out.append(
            RunningRun(
                id=placed.run.id,
                user=placed.recipe.owner,
                project=str(placed.run.spec.get("project", "default")),
                priority=int(placed.run.spec.get("priority", 0)),
                placement=tuple(per_node.items()),
                spot=bool(placed.run.spec.get("use_spot_instance", False)),
            )
        )
    return out


def _take(node: NodeModel, free: dict[str, list[int]], gpus: int) -> TaskPlacement:
    taken, free[node.name] = free[node.name][:gpus], free[node.name][gpus:]
    assert len(taken) == gpus, f"{node.name}: asked {gpus} GPUs, {len(taken)} free"
    return TaskPlacement(node.name, node.address, tuple(taken))


def _place_without_gpus(
    waiting: Waiting, schedulable: list[NodeModel], barred: Barred | None, out: Plan
) -> None:
    """Runs that need no GPU share one node, preferring nodes without GPUs so they
    leave GPU nodes to GPU work; never a node they are barred from."""
    if not schedulable:
        out.reasons[waiting.run.id] = (
            "no schedulable node (all nodes are cordoned, draining or down)"
        )
        out.waiting_for_capacity = True
        return
    allowed = [n for n in schedulable if barred is None or n.name not in barred.nodes]
    if not allowed:
        assert barred is not None
        out.reasons[waiting.run.id] = barred.reason
        return
    node = min(allowed, key=lambda n: (len(n.gpus or []), n.name))
    out.placements[waiting.run.id] = [
        TaskPlacement(node.name, node.address, ()) for _ in waiting.tasks
    ]


def _no_type_reason(gpu_type: str | None, spot: bool, index: CapacityIndex) -> str:
    kinds = sorted(index.types)
    have = f"schedulable: {', '.join(kinds)}" if kinds else "no schedulable GPU node"
    wanted = f"{gpu_type} " if gpu_type else ""
    capacity = "spot " if spot else "on-demand "
    return f"no capacity: no ready {capacity}{wanted}GPU node ({have})"
