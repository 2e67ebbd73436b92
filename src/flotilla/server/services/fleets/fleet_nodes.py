"""The node rows of fleets, changed by the fleet reconciler: what providers report
(ready, failed, a GPU failed, a spot notice, gone), the instances a request
created, and idle bookkeeping. Every state change goes through
`switch_node_state`, so each one is an event with its reason.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.provider import EventKind, Instance, InstanceState, ProviderEvent
from flotilla.core.status import NodeState, can_switch_node
from flotilla.server.db.models import NodeModel
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.fleets import SCALING_DOWN
from flotilla.server.services.fleets.nodes import LOCAL_NODE, node_from_instance, switch_node_state

ACTOR = "fleets"
# Sim nodes run their tasks as processes on this machine; a cloud instance would
# report its own address.
SIM_ADDRESS = "127.0.0.1"
_GPU_IN_DETAIL = re.compile(r"gpu\s+(\d+)", re.IGNORECASE)


async def apply_provider_events(
    session: AsyncSession, events: Sequence[tuple[str, ProviderEvent]], now: datetime
) -> bool:
    """Apply polled (provider name, event) pairs to the node rows. Events about
    instances no live node knows are dropped. True if any node changed."""
    ids = {e.instance_id for _, e in events}
    rows = (
        await session.execute(
            select(NodeModel)
            .where(NodeModel.instance_id.in_(ids), NodeModel.state != NodeState.TERMINATED.value)
            .order_by(NodeModel.created_at)
        )
    ).scalars()
    # The newest row wins when an instance id was reused (a restarted sim).
    nodes = {(n.provider, n.instance_id): n for n in rows}
    changed = False
    for provider, event in events:
        node = nodes.get((provider, event.instance_id))
        if node is not None:
            changed |= apply_event(session, node, event, now)
    return changed


def apply_event(
    session: AsyncSession, node: NodeModel, event: ProviderEvent, now: datetime
) -> bool:
    state = NodeState(node.state)
    if event.kind == EventKind.READY:
        return state == NodeState.PROVISIONING and _switch(
            session, node, NodeState.READY, "ready", now
        )
    if event.kind == EventKind.FAILED:
        return _switch(session, node, NodeState.FAILED, event.detail or "instance failed", now)
    if event.kind == EventKind.TERMINATED:
        why = event.detail or "terminated by the provider"
        return _switch(session, node, NodeState.TERMINATED, why, now)
    if event.kind == EventKind.GPU_FAILED:
        return _gpu_failed(session, node, event, now)
    if event.kind == EventKind.INTERRUPTION_NOTICE:
        deadline = event.deadline or event.at
        node.interruption_deadline = deadline
        why = f"spot interruption notice: instance reclaimed at {deadline.isoformat()}"
        if state in (NodeState.READY, NodeState.CORDONED):
            _switch(session, node, NodeState.DRAINING, why, now)
        else:
            _note(session, node, why, now)
        return True
    return False


def _switch(
    session: AsyncSession, node: NodeModel, new: NodeState, reason: str, now: datetime
) -> bool:
    if not can_switch_node(NodeState(node.state), new):
        return False
    return switch_node_state(session, node, new, reason=reason, actor=ACTOR, now=now)


def _gpu_failed(
    session: AsyncSession, node: NodeModel, event: ProviderEvent, now: datetime
) -> bool:
    index = event.gpu
    if index is None:
        match = _GPU_IN_DETAIL.search(event.detail)
        index = int(match.group(1)) if match else None
    if index is None:
        return False
    # A new list: the JSON column only notices assignment, not in-place edits.
    node.gpus = [{**g, "healthy": False} if g.get("index") == index else g for g in node.gpus]
    _note(session, node, f"GPU {index} unhealthy: {event.detail or 'failed'}", now)
    return True


def _note(session: AsyncSession, node: NodeModel, message: str, now: datetime) -> None:
    record_event(
        session,
        kind="node",
        message=f"{node.name}: {message}",
        actor=ACTOR,
        now=now,
        node_id=node.id,
        recipe_id=node.fleet_id,
    )


async def record_instances(
    session: AsyncSession,
    instances: Sequence[Instance],
    *,
    provider: str,
    fleet_id: str,
    request_id: str,
    now: datetime,
) -> list[NodeModel]:
    """Node rows for what `create_instances` returned. Idempotent: an instance
    already recorded for this request is skipped, so a request retried after a
    crash (same request id, same instances) adds nothing twice. A live node of
    the same name with no fleet (`local`) is adopted into the fleet."""
    names = [i.id for i in instances]
    existing = {
        n.name: n
        for n in (
            await session.execute(select(NodeModel).where(NodeModel.name.in_(names)))
        ).scalars()
    }
    recorded = {
        n.instance_id
        for n in (
            await session.execute(select(NodeModel).where(NodeModel.request_id == request_id))
        ).scalars()
    }
    out = []
    for instance in instances:
        if instance.id in recorded:
            continue
        same_name = existing.get(instance.id)
        if same_name is not None and same_name.fleet_id is None and not _gone(same_name):
            same_name.fleet_id, same_name.request_id = fleet_id, request_id
            _note(session, same_name, f"joined the fleet (request {request_id})", now)
            out.append(same_name)
            continue
        node = node_from_instance(
            instance,
            provider=provider,
            fleet_id=fleet_id,
            request_id=request_id,
            address=SIM_ADDRESS,
            now=now,
        )
        if same_name is not None:  # the id was used before (a restarted sim)
            node.name = f"{instance.id}-{uuid.uuid4().hex[:6]}"
        session.add(node)
        await session.flush()  # the node event refers to its id
        _note(session, node, f"created by request {request_id}", now)
        # The instance may already be up (a retried request whose READY was polled
        # before its node row existed).
        if instance.state == InstanceState.READY:
            _switch(session, node, NodeState.READY, "ready", now)
        elif instance.state == InstanceState.FAILED:
            _switch(session, node, NodeState.FAILED, "instance failed", now)
        out.append(node)
    return out


def release_node(session: AsyncSession, node: NodeModel, reason: str, now: datetime) -> None:
    """After the provider released its instance: the node is terminated — except
    this machine, which outlives `terminate` and only leaves the fleet, back to the
    ready `local` node it was before the fleet adopted it."""
    if node.name != LOCAL_NODE:
        _switch(session, node, NodeState.TERMINATED, reason, now)
        return
    _note(session, node, f"left the fleet: {reason}", now)
    node.fleet_id, node.request_id = None, None
    if node.state == NodeState.CORDONED.value and node.reason.startswith(SCALING_DOWN):
        _switch(session, node, NodeState.READY, "this machine", now)


def _gone(node: NodeModel) -> bool:
    return NodeState(node.state).is_gone()


async def update_idle(session: AsyncSession, idle: dict[str, datetime | None]) -> None:
    """Write the idle times the reconciler decided (None while a node is busy)."""
    if not idle:
        return
    rows = await session.execute(select(NodeModel).where(NodeModel.id.in_(list(idle))))
    for node in rows.scalars():
        if node.idle_since != idle[node.id]:
            node.idle_since = idle[node.id]
