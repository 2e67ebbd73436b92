"""Moving work off nodes that can no longer hold it, and preempting for the queue.

Called by the scheduler reconciler inside its transaction, with the snapshot it
loaded. A run on a node that is draining (an admin's drain, a spot interruption
notice), failed or terminated is evicted: stopped with the grace period
(the supervision reconciler delivers SIGTERM, then SIGKILL) and, once its
processes are gone, requeued as a new attempt — infrastructure requeues never use
up the recipe's `retries`. A draining node that holds nothing becomes cordoned.

The snapshot's nodes and holding runs are kept between steps and never changed
(`services/runs/capacity.py`): each run or node acted on is read again here, in
the scheduler's transaction, and acted on only if still as the snapshot said.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import NodeState, RunStatus
from flotilla.server.db.models import NodeModel, RunModel
from flotilla.server.services.fleets.nodes import switch_node_state
from flotilla.server.services.runs.runs import request_stop
from flotilla.server.services.runs.scheduling import Snapshot

ACTOR = "scheduler"


def evict(session: AsyncSession, run: RunModel, why: str, now: datetime) -> bool:
    """Stop `run` so that it is requeued, not finished. True if newly evicted."""
    if not RunStatus(run.status).holds_resources():
        return False  # it ended meanwhile
    if run.requeue_reason is not None or run.stop_requested_at is not None:
        return False  # already leaving: a user's stop (or max_duration) wins
    run.requeue_reason = why
    request_stop(session, run, reason=f"requeue: {why}", actor=ACTOR, now=now)
    return True


async def evict_from_lost_nodes(session: AsyncSession, snapshot: Snapshot, now: datetime) -> int:
    """Evict every run holding a node that evicts work. Returns how many."""
    whys: dict[str, str] = {}
    for placed in snapshot.placed:
        if placed.run.requeue_reason is not None or placed.run.stop_requested_at is not None:
            continue
        for task in placed.tasks:
            if task.node is None:
                continue
            node = snapshot.nodes.get(task.node) or snapshot.gone.get(task.node)
            if node is None or NodeState(node.state).evicts_work():
                state = node.state if node else "gone"
                detail = f": {node.reason}" if node and node.reason else ""
                whys[placed.run.id] = f"node {task.node} is {state}{detail}"
                break
    return await evict_runs(session, whys, now)


async def evict_runs(session: AsyncSession, whys: dict[str, str], now: datetime) -> int:
    """Evict each run of `whys` (run id -> why), read again first. Returns how many."""
    if not whys:
        return 0
    query = select(RunModel).where(RunModel.id.in_(whys)).execution_options(populate_existing=True)
    runs = (await session.execute(query)).scalars().all()
    return sum(evict(session, run, whys[run.id], now) for run in runs)


async def finish_drains(session: AsyncSession, snapshot: Snapshot, now: datetime) -> None:
    for cached in snapshot.nodes.values():
        if cached.state != NodeState.DRAINING.value or cached.name in snapshot.busy:
            continue
        node = await session.get(NodeModel, cached.id, populate_existing=True)
        if node is None or node.state != NodeState.DRAINING.value:
            continue
        switch_node_state(
            session,
            node,
            NodeState.CORDONED,
            reason=f"drained ({node.reason})" if node.reason else "drained",
            actor=ACTOR,
            now=now,
        )
