"""What the scheduler decides on: live nodes and their free GPUs and the runs
holding them (kept up to date between steps: `capacity.py`), the head of the
pending queue (kept too: `queue_head.py`), recent usage per user and the queue policy. Called by
`reconcilers/scheduler.py` inside its transaction; the decision itself is pure
(`core.queue`, `core.packing`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.queue import Policy
from flotilla.core.status import NodeState
from flotilla.server.db.models import NodeModel, RecipeModel, RunModel, SettingModel, TaskModel
from flotilla.server.services.fleets.nodes import healthy_gpus
from flotilla.server.services.runs.capacity import Capacity, Placed
from flotilla.server.services.runs.queue_head import QueueHead, Waiting

# Pending runs read per owner and priority tier in one scheduler step: the
# decision ends after as many misses in a row (`reconcilers/scheduler.QUEUE_DEPTH`),
# so no owner's later runs could be reached in the same step.
PENDING_WINDOW = 500
POLICY_KEY = "scheduler_policy"
# Fair share looks at the last day of usage, halving its weight every hour.
USAGE_WINDOW = timedelta(hours=24)
USAGE_HALF_LIFE = 3600.0


@dataclass(frozen=True)
class Barred:
    """Nodes a pending run may not use (they cannot isolate and do not trust its
    user: `services/fleets/node_trust.py`), and what to tell if that keeps it waiting."""

    nodes: frozenset[str]
    reason: str


@dataclass
class Snapshot:
    nodes: dict[str, NodeModel]  # live (not terminated) nodes by name
    gone: dict[str, NodeModel] = field(default_factory=dict)  # terminated, still held
    held: dict[str, set[int]] = field(default_factory=dict)  # node -> GPUs held by runs
    busy: set[str] = field(default_factory=set)  # nodes holding any task
    placed: list[Placed] = field(default_factory=list)
    pending: list[Waiting] = field(default_factory=list)
    # Pending runs whose stored spec no longer validates, with why: the scheduler
    # ends them in error instead of failing the whole cycle for everyone.
    broken: list[tuple[RunModel, str]] = field(default_factory=list)
    # Pending run -> the nodes it may not use (filled by the scheduler; empty while
    # every node isolates).
    barred: dict[str, Barred] = field(default_factory=dict)
    # Some owner has more pending runs in a tier than were read: after placing
    # any, the scheduler looks again at once rather than at its next resync.
    more_waiting: bool = False
    # `Capacity.version` when loaded: equal versions, equal nodes and holders.
    capacity_version: int = 0

    def free_gpus(self, node: NodeModel) -> list[int]:
        held = self.held.get(node.name, set())
        return [g for g in healthy_gpus(node) if g not in held]

    def schedulable(self) -> list[NodeModel]:
        """Ready nodes, except those the provider will reclaim (a spot notice that
        came while they were still provisioning): new work would only be evicted."""
        return [
            n
            for n in self.nodes.values()
            if NodeState(n.state).is_schedulable() and n.interruption_deadline is None
        ]


async def load_snapshot(
    session: AsyncSession,
    now: datetime,
    capacity: Capacity,
    window: int = PENDING_WINDOW,
    queue: QueueHead | None = None,
) -> Snapshot:
    """Nodes and what holds them (`capacity`, refreshed from what changed) and the
    head of the queue: of each owner's runs in each priority tier, the `window`
    that arrived first. The decision takes runs in that order (priority tiers,
    then fair share between owners, then arrival), so no run it would reach
    before those is left out, and the rows read do not grow with the queue. A run
    still waiting out its retry back-off (`not_before` after `now`) is not in the
    queue yet."""
    await capacity.refresh(session)
    snapshot = Snapshot(
        dict(capacity.nodes),
        placed=list(capacity.placed.values()),
        capacity_version=capacity.version,
    )
    for placed in snapshot.placed:
        for task in placed.tasks:
            if task.node:
                snapshot.busy.add(task.node)
                snapshot.held.setdefault(task.node, set()).update(task.gpus or [])
    head = await (queue or QueueHead()).read(session, now, window)
    snapshot.pending, snapshot.broken, snapshot.more_waiting = (
        head.pending,
        head.broken,
        head.more_waiting,
    )
    missing = snapshot.busy - snapshot.nodes.keys()
    if missing:  # work still on terminated nodes: keep them to say what happened
        query = select(NodeModel).where(NodeModel.name.in_(missing))
        snapshot.gone = {n.name: n for n in (await session.execute(query)).scalars()}
    return snapshot


async def recent_usage(session: AsyncSession, now: datetime) -> dict[str, float]:
    """GPU-seconds per user over the usage window, decayed by age, for fair share.
    Runs still going count up to now."""
    query = (
        select(TaskModel.gpus, TaskModel.started_at, TaskModel.finished_at, RecipeModel.owner)
        .join(RunModel, RunModel.id == TaskModel.run_id)
        .join(RecipeModel, RecipeModel.id == RunModel.recipe_id)
        .where(
            TaskModel.started_at.is_not(None),
            (TaskModel.finished_at.is_(None)) | (TaskModel.finished_at > now - USAGE_WINDOW),
        )
    )
    usage: dict[str, float] = {}
    for gpus, started, finished, owner in await session.execute(query):
        if not gpus or started is None:
            continue
        end = finished or now
        seconds = max(0.0, (end - max(started, now - USAGE_WINDOW)).total_seconds())
        decay = 0.5 ** ((now - end).total_seconds() / USAGE_HALF_LIFE)
        usage[owner] = usage.get(owner, 0.0) + len(gpus) * seconds * decay
    return usage


def policy_from(value: dict[str, Any]) -> Policy:
    return Policy(
        user_quota={k: int(v) for k, v in value.get("user_quota", {}).items()},
        project_quota={k: int(v) for k, v in value.get("project_quota", {}).items()},
        user_weight={k: float(v) for k, v in value.get("user_weight", {}).items()},
        preempt_equal_priority=bool(value.get("preempt_equal_priority", False)),
    )


async def load_policy(session: AsyncSession) -> Policy:
    row = await session.get(SettingModel, POLICY_KEY)
    return policy_from(row.value if row else {})


async def save_policy(session: AsyncSession, value: dict[str, Any], now: datetime) -> None:
    row = await session.get(SettingModel, POLICY_KEY)
    if row is None:
        session.add(SettingModel(key=POLICY_KEY, value=value, updated_at=now))
    else:
        row.value, row.updated_at = value, now
