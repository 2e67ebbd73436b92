"""Moving work off nodes that can no longer hold it, and preempting for the queue.

Called by the scheduler reconciler inside its transaction, with the snapshot it
loaded. A run on a node that is draining (an admin's drain, a spot interruption
notice), failed or terminated is evicted: stopped with the grace period
(the supervision reconciler delivers SIGTERM, then SIGKILL) and, once its
processes are gone, requeued as a new attempt — infrastructure requeues never use
up the recipe's `retries`. A draining node that holds nothing becomes cordoned.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import NodeState
from flotilla.server.db.models import RunModel
from flotilla.server.services.fleets.nodes import switch_node_state
from flotilla.server.services.runs.runs import request_stop
from flotilla.server.services.runs.scheduling import Snapshot

ACTOR = "scheduler"


def evict(session: AsyncSession, run: RunModel, why: str, now: datetime) -> bool:
    """Stop `run` so that it is requeued, not finished. True if newly evicted."""
    if run.requeue_reason is not None or run.stop_requested_at is not None:
        return False  # already leaving: a user's stop (or max_duration) wins
    run.requeue_reason = why
    request_stop(session, run, reason=f"requeue: {why}", actor=ACTOR, now=now)
    return True


def evict_from_lost_nodes(session: AsyncSession, snapshot: Snapshot, now: datetime) -> int:
    """Evict every run holding a node that evicts work. Returns how many."""
    count = 0
    for placed in snapshot.placed:
        for task in placed.tasks:
            if task.node is None:
                continue
            node = snapshot.nodes.get(task.node) or snapshot.gone.get(task.node)
            if node is None or NodeState(node.state).evicts_work():
                state = node.state if node else "gone"
                detail = f": {node.reason}" if node and node.reason else ""
                why = f"node {task.node} is {state}{detail}"
                count += evict(session, placed.run, why, now)
                break
    return count


def finish_drains(session: AsyncSession, snapshot: Snapshot, now: datetime) -> None:
    for node in snapshot.nodes.values():
        if node.state == NodeState.DRAINING.value and node.name not in snapshot.busy:
            switch_node_state(
                session,
                node,
                NodeState.CORDONED,
                reason=f"drained ({node.reason})" if node.reason else "drained",
                actor=ACTOR,
                now=now,
            )


def preempt(
    session: AsyncSession, snapshot: Snapshot, victims: dict[str, str], now: datetime
) -> None:
    runs = {p.run.id: p.run for p in snapshot.placed}
    for run_id, why in victims.items():
        if run_id in runs:
            evict(session, runs[run_id], why, now)
