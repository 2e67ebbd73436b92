"""Queue policy: which pending runs start now, which must wait (and why), and which
running runs to preempt. Pure: `schedule()` takes a snapshot and returns decisions.

Order: priority first; within a priority, the user with the smallest weighted
share of GPUs (recent usage plus what they hold now, divided by their weight) goes
next, so a heavy user cannot starve others; within a user, oldest first.

A run that cannot be placed reserves the spot it is closest to fitting (backfill
without delaying the head): later, smaller runs may still start elsewhere, but
never on the reserved nodes. Quotas are hard limits per user and per project.
Preemption frees room for a blocked run from lower-priority (or spot) runs, never
from equal-priority on-demand runs. A run may be barred from some nodes (the
caller's reason: a node that cannot isolate tasks and does not trust its user):
it is placed, reserves and preempts only elsewhere, and where only those nodes
could take it, it waits with the caller's reason.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from flotilla.core.topology import CapacityIndex, TypeIndex


@dataclass(frozen=True)
class QueuedRun:
    id: str
    user: str
    project: str
    nodes: int  # tasks, one per node (gang)
    gpus_per_node: int
    gpu_type: str
    priority: int = 0
    queued_at: float = 0.0
    spot: bool = False  # may run on spot capacity (and is itself preemptible)
    # Nodes this run may not use (a node that cannot isolate tasks and does not
    # trust its user), and why, for when only those could take it.
    barred: frozenset[str] = frozenset()
    barred_reason: str = ""

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


@dataclass(frozen=True)
class RunningRun:
    id: str
    user: str
    project: str
    priority: int
    placement: tuple[tuple[str, int], ...]  # (node, GPUs held) per task
    spot: bool = False

    @property
    def gpus(self) -> int:
        return sum(g for _, g in self.placement)


@dataclass
class Policy:
    user_quota: dict[str, int] = field(default_factory=dict)  # GPUs; absent = unlimited
    project_quota: dict[str, int] = field(default_factory=dict)
    user_weight: dict[str, float] = field(default_factory=dict)  # default 1.0
    preempt_equal_priority: bool = False


@dataclass
class Decision:
    placed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # run -> nodes
    reasons: dict[str, str] = field(default_factory=dict)  # run -> why it waits
    preempt: dict[str, str] = field(default_factory=dict)  # running run -> why


def schedule(
    index: CapacityIndex,
    queue: Iterable[QueuedRun],
    running: Iterable[RunningRun],
    usage: dict[str, float] | None = None,
    policy: Policy | None = None,
    max_decisions: int | None = None,
    max_misses: int | None = None,
    on_place: Callable[[QueuedRun, TypeIndex, tuple[str, ...]], None] | None = None,
) -> Decision:
    """Decide one cycle. `index` is updated in place with what was placed, so the
    caller can keep using it. `queue` is in arrival order. `usage` is recent
    GPU-seconds per user (decayed by the caller). `max_misses` ends the cycle after
    that many runs in a row could not start (the rest of a long queue keeps its
    previous reason: like Slurm's queue depth). `on_place` sees each placement
    before it is applied (benchmarks use it to judge placement quality)."""
    policy = policy or Policy()
    usage = usage or {}
    running = list(running)
    held_user, held_project = held_gpus(running)
    decision = Decision()
    blocked_types: dict[str, str] = {}  # gpu type -> the blocked head holding a reservation
    reserved: list[tuple[TypeIndex, str, int]] = []
    higher_blocked = 0
    decisions = misses = 0
    for run in _fair_order(queue, held_user, usage, policy):
        if max_decisions is not None and decisions >= max_decisions:
            break
        if max_misses is not None and misses >= max_misses:
            break
        decisions += 1
        misses += 1
        reason = quota_reason(run.user, run.project, run.gpus, (held_user, held_project), policy)
        if reason:
            decision.reasons[run.id] = reason
            continue
        type_index = index.index(run.gpu_type)
        if type_index is None:
            decision.reasons[run.id] = f"no capacity of type {run.gpu_type}"
            continue
        # Nodes the run may not use are out of the index while it is decided: no
        # placement, reservation or preemption for it there.
        room_if_allowed = bool(run.barred) and _place(type_index, run) is not None
        hidden = _hide(type_index, run.barred)
        try:
            nodes = _place(type_index, run)
            if nodes is not None:
                if on_place is not None:
                    on_place(run, type_index, nodes)
                for name in nodes:
                    type_index.take(name, run.gpus_per_node)
                decision.placed[run.id] = nodes
                misses = 0
                held_user[run.user] = held_user.get(run.user, 0) + run.gpus
                held_project[run.project] = held_project.get(run.project, 0) + run.gpus
                continue
            if _never_fits_allowed(type_index, run):
                # Only nodes it may not use could take it: say so, hold nobody back.
                decision.reasons[run.id] = run.barred_reason
                continue
            if run.gpus_per_node > type_index.max_gpus:
                # It can never fit these nodes: say so, and let it hold nobody back.
                decision.reasons[run.id] = _capacity_reason(type_index, run)
                continue
            head = blocked_types.get(run.gpu_type)
            if head is not None:
                decision.reasons[run.id] = (
                    f"behind {higher_blocked} waiting run(s) with higher or equal priority "
                    f"({run.gpu_type} capacity held for run {head})"
                )
                continue
            decision.reasons[run.id] = (
                run.barred_reason if room_if_allowed else _capacity_reason(type_index, run)
            )
            victims = _preemption(type_index, run, running, decision, policy)
            if victims:
                for victim, why in victims.items():
                    decision.preempt[victim] = why
                decision.reasons[run.id] = f"preempting {len(victims)} run(s) to make room"
            if run.barred:
                continue  # it may not go everywhere: it holds nobody's capacity back
            blocked_types[run.gpu_type] = run.id
            higher_blocked += 1
            reserved += _reserve(type_index, run)
        finally:
            _show(type_index, hidden)
    for type_index, name, gpus in reserved:  # reservations last only for this cycle
        type_index.release(name, gpus)
    return decision


def _fair_order(
    queue: Iterable[QueuedRun], held: dict[str, int], usage: dict[str, float], policy: Policy
) -> Iterable[QueuedRun]:
    """Priority tiers; in a tier, repeatedly the user with the lowest weighted share."""
    tiers: dict[int, dict[str, list[QueuedRun]]] = {}
    for run in queue:
        tiers.setdefault(run.priority, {}).setdefault(run.user, []).append(run)
    share = {u: usage.get(u, 0.0) / 3600 + held.get(u, 0) for u in usage.keys() | held.keys()}
    for priority in sorted(tiers, reverse=True):
        per_user = tiers[priority]
        cursor = dict.fromkeys(per_user, 0)  # runs of a user, oldest first (arrival order)
        # Ties (equal shares) go to the user whose oldest waiting run is oldest.
        heap = [
            (_weighted(share.get(u, 0.0), u, policy), runs[0].queued_at, u)
            for u, runs in per_user.items()
        ]
        heapq.heapify(heap)
        while heap:
            _, _, user = heapq.heappop(heap)
            run = per_user[user][cursor[user]]
            cursor[user] += 1
            yield run
            # Charge the user as if the run started, so the next pick is fair even
            # within one cycle; a run that does not start is charged all the same
            # (it is waiting for that share).
            share[user] = share.get(user, 0.0) + run.gpus
            if cursor[user] < len(per_user[user]):
                oldest = per_user[user][cursor[user]].queued_at
                heapq.heappush(heap, (_weighted(share[user], user, policy), oldest, user))


def _weighted(share: float, user: str, policy: Policy) -> float:
    return share / max(policy.user_weight.get(user, 1.0), 1e-9)


QUOTA_REASONS = ("user quota:", "project quota:")
# A new run's reason until the scheduler has looked at it.
QUEUED = "queued"


def held_by_quota(reason: str) -> bool:
    """Whether a pending run's reason says a quota holds it back: more nodes would
    not start it, so it is no demand for a fleet to grow for."""
    return reason.startswith(QUOTA_REASONS)


def scheduler_has_looked(reason: str) -> bool:
    """Whether a pending run's reason is the scheduler's (a new run's is QUEUED)."""
    return bool(reason) and reason != QUEUED


def held_gpus(running: Iterable[RunningRun]) -> tuple[dict[str, int], dict[str, int]]:
    """GPUs held by running runs, per user and per project (what quotas limit)."""
    held_user: dict[str, int] = {}
    held_project: dict[str, int] = {}
    for active in running:
        held_user[active.user] = held_user.get(active.user, 0) + active.gpus
        held_project[active.project] = held_project.get(active.project, 0) + active.gpus
    return held_user, held_project


def quota_reason(
    user: str,
    project: str,
    gpus: int,
    held: tuple[dict[str, int], dict[str, int]],
    policy: Policy,
) -> str | None:
    """Why a quota holds back a run of `gpus` GPUs, or None."""
    held_user, held_project = held
    limit = policy.user_quota.get(user)
    if limit is not None and held_user.get(user, 0) + gpus > limit:
        return (
            f"{QUOTA_REASONS[0]} {user} holds {held_user.get(user, 0)} GPUs, "
            f"this run needs {gpus}, the limit is {limit}"
        )
    limit = policy.project_quota.get(project)
    if limit is not None and held_project.get(project, 0) + gpus > limit:
        return (
            f"{QUOTA_REASONS[1]} {project} holds {held_project.get(project, 0)} GPUs, "
            f"this run needs {gpus}, the limit is {limit}"
        )
    return None


def _place(index: TypeIndex, run: QueuedRun) -> tuple[str, ...] | None:
    if run.gpus_per_node > index.max_gpus or run.gpus > index.free_total:
        return None
    if run.nodes == 1:
        node = index.best_single(run.gpus_per_node)
        return (node,) if node is not None else None
    fit = index.best_gang(run.nodes, run.gpus_per_node)
    return fit.nodes if fit is not None else None


def _hide(index: TypeIndex, names: frozenset[str]) -> list[str]:
    hidden = [n for n in names if n in index.nodes and index.nodes[n].schedulable]
    for name in hidden:
        index.set_schedulable(name, False)
    return hidden


def _show(index: TypeIndex, hidden: list[str]) -> None:
    for name in hidden:
        index.set_schedulable(name, True)


def _never_fits_allowed(index: TypeIndex, run: QueuedRun) -> bool:
    """Whether too few of the nodes `run` may use are large enough for it, however
    much frees up (with barred nodes hidden, only those count as schedulable)."""
    if not run.barred:
        return False
    large = [n for n in index.nodes.values() if n.schedulable and n.gpu_count >= run.gpus_per_node]
    return len(large) < run.nodes


def _capacity_reason(index: TypeIndex, run: QueuedRun) -> str:
    if run.gpus_per_node > index.max_gpus:
        return (
            f"needs {run.gpus_per_node} {run.gpu_type} GPUs on one node; only "
            f"{index.max_gpus} exist on the largest schedulable node"
        )
    if run.nodes == 1:
        most = next((f for f in range(index.max_gpus, -1, -1) if index.by_free[f]), 0)
        total = sum(n.gpu_count for n in index.nodes.values() if n.schedulable)
        return (
            f"waiting for {run.gpus_per_node} {run.gpu_type} GPUs on one node: "
            f"{index.free_total} of {total} free, at most {most} on one node"
        )
    best = max(
        ((counts[run.gpus_per_node], group) for group, counts in index.counts["partition"].items()),
        default=(0, "none"),
    )
    return (
        f"waiting for an IB partition with {run.nodes} nodes of {run.gpus_per_node} free "
        f"{run.gpu_type} GPUs (best now: {best[0]} in {best[1]})"
    )


def _reserve(index: TypeIndex, run: QueuedRun) -> list[tuple[TypeIndex, str, int]]:
    """Hold the free GPUs of the nodes the blocked run is closest to getting (the
    `run.nodes` emptiest nodes of the best partition), so the runs behind it cannot
    take them this cycle; the rest stays open for backfill."""
    if run.nodes == 1:
        pool = [n for n in index.nodes.values() if n.schedulable and n.free > 0]
    else:
        partition = max(
            index.counts["partition"], key=lambda g: index.counts["partition"][g][run.gpus_per_node]
        )
        pool = [
            index.nodes[name]
            for name in index.members["partition"][partition]
            if index.nodes[name].schedulable and index.nodes[name].free > 0
        ]
    candidates = sorted(pool, key=lambda n: -n.free)[: run.nodes]
    held = []
    for node in candidates:
        gpus = node.free
        index.take(node.name, gpus)
        held.append((index, node.name, gpus))
    return held


def _preemption(
    index: TypeIndex,
    run: QueuedRun,
    running: list[RunningRun],
    decision: Decision,
    policy: Policy,
) -> dict[str, str]:
    """The fewest preemptible runs whose GPUs, with what is free, let `run` fit."""

    def preemptible(victim: RunningRun) -> bool:
        if victim.id in decision.preempt:
            return False
        if victim.priority < run.priority:
            return True
        if victim.priority == run.priority:
            return policy.preempt_equal_priority or (victim.spot and not run.spot)
        return False

    # Only runs on nodes `run` may use free room for it (barred ones are hidden).
    candidates = [
        v
        for v in running
        if preemptible(v)
        and any(n in index.nodes and index.nodes[n].schedulable for n, _ in v.placement)
    ]
    if not candidates:
        return {}
    candidates.sort(key=lambda v: (v.priority, not v.spot, v.gpus))
    freed: dict[str, int] = {}
    chosen: dict[str, str] = {}
    for victim in candidates:
        for node, gpus in victim.placement:
            freed[node] = freed.get(node, 0) + gpus
        chosen[victim.id] = (
            f"preempted for run {run.id} (priority {run.priority} > {victim.priority})"
            if victim.priority < run.priority
            else f"spot run preempted for on-demand run {run.id}"
        )
        if _fits_with(index, run, freed):
            return chosen
    return {}


def _fits_with(index: TypeIndex, run: QueuedRun, freed: dict[str, int]) -> bool:
    by_partition: dict[str, int] = {}
    for node in index.nodes.values():
        if not node.schedulable:
            continue
        if node.free + freed.get(node.name, 0) >= run.gpus_per_node:
            by_partition[node.partition] = by_partition.get(node.partition, 0) + 1
    return any(count >= run.nodes for count in by_partition.values())
