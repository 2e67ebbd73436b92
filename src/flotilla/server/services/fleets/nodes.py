"""Nodes: registering them, moving them through their lifecycle, reading them.

`switch_node_state` is the only place a node's state changes; it checks the
transition and records an event with who and why. What a state means for the work
on the node (requeue on drain or failure) is the scheduler's business
(`reconcilers/recovery.py`), which reads these states.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.base import NodeInventory
from flotilla.compute.provider import Instance
from flotilla.core.status import NodeState, can_switch_node
from flotilla.errors import Conflict, NotFound
from flotilla.server.db.models import NodeModel
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.node_isolation import ISOLATION_LABEL, isolation_labels

LOCAL_NODE = "local"
# Labels an admin set (`services/fleets/node_trust.py`), kept when the server restarts.
KEPT_LABELS = ("trusted",)
LIVE_STATES = [s.value for s in NodeState if not s.is_gone()]


def switch_node_state(
    session: AsyncSession,
    node: NodeModel,
    new: NodeState,
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> bool:
    """Move `node` to `new`, recording who and why. False if it was there already."""
    current = NodeState(node.state)
    if current == new:
        return False
    if not can_switch_node(current, new):
        raise Conflict(f"node {node.name} cannot go from {current} to {new}")
    node.state = new.value
    node.reason = reason
    if new == NodeState.READY and node.ready_at is None:
        node.ready_at = now
        node.idle_since = now
    if new == NodeState.TERMINATED:
        node.terminated_at = now
    if new == NodeState.FAILED:
        node.failed_at = now
    record_event(
        session,
        kind="node",
        message=f"{node.name}: {current} -> {new}" + (f": {reason}" if reason else ""),
        actor=actor,
        now=now,
        node_id=node.id,
        recipe_id=node.fleet_id,
    )
    return True


def gpu_slots(count: int) -> list[dict[str, Any]]:
    return [{"index": i, "healthy": True} for i in range(count)]


async def ensure_local_node(
    session: AsyncSession,
    inventory: NodeInventory,
    now: datetime,
    probe: str | None = None,
    run_as_user: bool | None = None,
) -> NodeModel:
    """The server's own machine as a node. Its GPUs and its isolation (`probe`,
    default the inventory's, with FLOTILLA_RUN_AS_USER) follow this start; an
    admin's cordon and trust list survive restarts."""
    probe = probe or str(inventory.labels.get(ISOLATION_LABEL, ""))
    labels = local_labels(inventory, probe, run_as_user)
    node = await find_node(session, LOCAL_NODE)
    gpus = [{"index": g.index, "healthy": True} for g in inventory.gpus]
    if node is None:
        node = NodeModel(
            id=uuid.uuid4().hex,
            name=LOCAL_NODE,
            fleet_id=None,
            provider="local",
            instance_id=LOCAL_NODE,
            request_id=None,
            instance_type="local",
            region="local",
            spot=False,
            state=NodeState.READY.value,
            reason="this machine",
            address=inventory.address,
            gpu_type=inventory.gpu_type,
            gpus=gpus,
            cpus=inventory.cpus,
            memory_bytes=inventory.memory_bytes,
            labels=labels,
            price_per_hour=0.0,
            created_at=now,
            ready_at=now,
            idle_since=now,
            interruption_deadline=None,
            terminated_at=None,
        )
        session.add(node)
        await session.flush()
        record_event(
            session,
            kind="node",
            message="local: registered",
            actor="server",
            now=now,
            node_id=node.id,
        )
        return node
    node.gpu_type, node.gpus = inventory.gpu_type, gpus
    node.cpus, node.memory_bytes = inventory.cpus, inventory.memory_bytes
    kept = {k: v for k, v in node.labels.items() if k in KEPT_LABELS}
    node.labels = {**labels, **kept}
    return node


def local_labels(
    inventory: NodeInventory, probe: str = "", run_as_user: bool | None = None
) -> dict[str, Any]:
    # One machine is its own partition, spine, leaf and NVLink domain.
    return {
        **inventory.labels,
        **isolation_labels(probe, run_as_user),
        "region": "local",
        "ib_network": "",
        "partition": "local",
        "spine": "local",
        "leaf": "local",
        "nvlink": "local",
    }


def node_from_instance(
    instance: Instance,
    *,
    provider: str,
    fleet_id: str | None,
    request_id: str,
    address: str,
    now: datetime,
) -> NodeModel:
    """A node row for an instance a provider just created (state `provisioning`)."""
    topo = instance.node
    return NodeModel(
        id=uuid.uuid4().hex,
        name=instance.id,
        fleet_id=fleet_id,
        provider=provider,
        instance_id=instance.id,
        request_id=request_id,
        instance_type=instance.instance_type,
        region=instance.region,
        spot=instance.spot,
        state=NodeState.PROVISIONING.value,
        reason="provisioning",
        address=address,
        gpu_type=topo.gpu_type,
        gpus=gpu_slots(topo.gpu_count),
        cpus=0,
        memory_bytes=0,
        labels={
            **topo.labels,
            "region": instance.region,
            "partition": topo.partition,
            "spine": topo.spine,
            "leaf": topo.leaf,
            "nvlink": topo.nvlink,
        },
        price_per_hour=instance.price_per_hour,
        created_at=now,
        ready_at=None,
        idle_since=None,
        # Known only once the provider's notice arrives (fleet reconciler).
        interruption_deadline=None,
        terminated_at=None,
    )


# The label of a node whose tasks are timed, not run (`compute/virtual/`).
EXECUTION_LABEL = "execution"
VIRTUAL = "virtual"


def is_virtual(node: NodeModel) -> bool:
    return (node.labels or {}).get(EXECUTION_LABEL) == VIRTUAL


async def nodes_named(session: AsyncSession, names: Iterable[str]) -> list[NodeModel]:
    wanted = set(names)
    if not wanted:
        return []
    return list(
        (await session.execute(select(NodeModel).where(NodeModel.name.in_(wanted)))).scalars()
    )


async def find_node(session: AsyncSession, name: str) -> NodeModel | None:
    query = select(NodeModel).where(NodeModel.name == name)
    return (await session.execute(query)).scalars().first()


async def get_node(session: AsyncSession, name: str) -> NodeModel:
    node = await find_node(session, name)
    if node is None:
        raise NotFound(f"node {name!r}")
    return node


async def live_nodes(session: AsyncSession) -> Sequence[NodeModel]:
    query = select(NodeModel).where(NodeModel.state.in_(LIVE_STATES)).order_by(NodeModel.name)
    return (await session.execute(query)).scalars().all()


def healthy_gpus(node: NodeModel) -> list[int]:
    return [int(g["index"]) for g in node.gpus if g.get("healthy", True)]
