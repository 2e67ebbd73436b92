"""The API view of nodes: provider, fleet, topology, price, age, and what each GPU
is doing. Read-only; called by `routers/nodes.py`.

A GPU's holder is computed, never stored: it is the current task (`attempt ==
run.attempt`) of a run whose status holds resources — the rule the scheduler uses
to count free GPUs, so `flo nodes` and placement cannot disagree about who holds
what.

Nodes are shared capacity: everyone sees every node, its state and which GPUs are
taken. What names other tenants' work is shown only to those who may read it: a
GPU's holder (the run, its job, its task) and the node's fleet (its name and id,
also removed from the node's reason). Filtering by a fleet one may not read finds
nothing, as if it did not exist; node events (they name runs) are for admins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import HOLDING, NodeState
from flotilla.recipes.types import FLEET
from flotilla.server.db.models import NodeModel, RecipeModel, RunModel, TaskModel
from flotilla.server.identity import Identity
from flotilla.server.services.events import event_view, node_events
from flotilla.server.services.fleets.nodes import LIVE_STATES, get_node
from flotilla.server.services.views import iso


@dataclass(frozen=True)
class GpuHolder:
    run_id: str
    job: str
    task: str

    def as_dict(self) -> dict[str, str]:
        return {"run_id": self.run_id, "job": self.job, "task": self.task}


# node name -> GPU index -> the task holding it
Holders = dict[str, dict[int, GpuHolder]]


# What a caller sees of a GPU held by work they may not read: that it is taken.
HIDDEN_HOLDER = GpuHolder("", "(another user's run)", "")


async def gpu_holders(
    session: AsyncSession, identity: Identity, node: str | None = None
) -> Holders:
    """Who holds each GPU, for one node or (with `node=None`) all of them. One query
    whose size follows the running work, not the number of nodes. Work the caller
    may not read shows only as taken."""
    query = (
        select(
            TaskModel.node,
            TaskModel.gpus,
            TaskModel.name,
            RunModel.id,
            RecipeModel.name,
            RecipeModel.owner,
            RecipeModel.project,
        )
        .join(RunModel, RunModel.id == TaskModel.run_id)
        .join(RecipeModel, RecipeModel.id == RunModel.recipe_id)
        .where(RunModel.status.in_(HOLDING), TaskModel.attempt == RunModel.attempt)
    )
    if node is not None:
        query = query.where(TaskModel.node == node)
    holders: Holders = {}
    for node_name, gpus, task_name, run_id, job_name, owner, project in await session.execute(
        query
    ):
        if not node_name:
            continue  # placed nowhere yet
        slots = holders.setdefault(node_name, {})
        visible = identity.can_read(owner, project)
        holder = GpuHolder(run_id, job_name, task_name) if visible else HIDDEN_HOLDER
        for index in gpus or []:
            slots[int(index)] = holder
    return holders


@dataclass(frozen=True)
class FleetRef:
    name: str
    visible: bool  # whether the caller may read the fleet


async def fleet_refs(
    session: AsyncSession, identity: Identity, fleet_ids: set[str]
) -> dict[str, FleetRef]:
    if not fleet_ids:
        return {}
    rows = await session.execute(
        select(RecipeModel.id, RecipeModel.name, RecipeModel.owner, RecipeModel.project).where(
            RecipeModel.id.in_(fleet_ids)
        )
    )
    return {
        recipe_id: FleetRef(name, identity.can_read(owner, project))
        for recipe_id, name, owner, project in rows
    }


async def list_node_views(
    session: AsyncSession,
    identity: Identity,
    now: datetime,
    *,
    state: NodeState | None = None,
    fleet: str | None = None,
    gpu_type: str | None = None,
) -> list[dict[str, Any]]:
    """Nodes by name. Without `state`, terminated nodes are left out: they only
    pile up; `state=terminated` shows them."""
    query = select(NodeModel).order_by(NodeModel.name)
    if state is None:
        query = query.where(NodeModel.state.in_(LIVE_STATES))
    else:
        query = query.where(NodeModel.state == state.value)
    if gpu_type:
        query = query.where(func.upper(NodeModel.gpu_type) == gpu_type.upper())
    if fleet:
        # By name, deleted fleets included: their nodes may still be terminating.
        ids = select(RecipeModel.id).where(RecipeModel.type == FLEET, RecipeModel.name == fleet)
        query = query.where(NodeModel.fleet_id.in_(ids))
    nodes = (await session.execute(query)).scalars().all()
    views = await _views(session, identity, nodes, now, await gpu_holders(session, identity))
    # A fleet the caller may not read matches nothing: its name is not for them.
    return [v for v in views if v["fleet"] is not None] if fleet else views


async def node_detail(
    session: AsyncSession, identity: Identity, name: str, now: datetime
) -> dict[str, Any]:
    """One node's view and its events, oldest first (events name runs, so only
    admins get them). NotFound for an unknown name."""
    node = await get_node(session, name)
    holders = await gpu_holders(session, identity, node.name)
    (view,) = await _views(session, identity, [node], now, holders)
    events = await node_events(session, node.id) if identity.is_admin else []
    return {**view, "events": [event_view(e) for e in events]}


async def _views(
    session: AsyncSession,
    identity: Identity,
    nodes: Sequence[NodeModel],
    now: datetime,
    holders: Holders,
) -> list[dict[str, Any]]:
    fleets = await fleet_refs(session, identity, {n.fleet_id for n in nodes if n.fleet_id})
    return [
        node_view(n, fleets.get(n.fleet_id) if n.fleet_id else None, holders.get(n.name, {}), now)
        for n in nodes
    ]


def node_view(
    node: NodeModel, fleet: FleetRef | None, holders: dict[int, GpuHolder], now: datetime
) -> dict[str, Any]:
    hidden = fleet is not None and not fleet.visible
    gpus = [_gpu_view(node, gpu, holders.get(int(gpu["index"]))) for gpu in node.gpus]
    unhealthy = sum(1 for g in gpus if not g["healthy"])
    # Free means healthy and unheld; whether the scheduler may use it also depends
    # on `state` (only `ready` nodes take new work), which the view shows beside it.
    free = sum(1 for g in gpus if g["healthy"] and g["holder"] is None)
    return {
        "id": node.id,
        "name": node.name,
        "provider": node.provider,
        "fleet": fleet.name if fleet and fleet.visible else None,
        "fleet_id": None if hidden else node.fleet_id,
        "instance_id": node.instance_id,
        "instance_type": node.instance_type,
        "region": node.region,
        "spot": node.spot,
        "state": node.state,
        "reason": _without_fleet(node.reason, fleet) if fleet and hidden else node.reason,
        "address": node.address,
        "gpu_type": node.gpu_type,
        "gpus": gpus,
        "gpu_counts": {
            "total": len(gpus),
            "free": free,
            "held": sum(1 for g in gpus if g["holder"] is not None),
            "unhealthy": unhealthy,
        },
        "cpus": node.cpus,
        "memory_bytes": node.memory_bytes,
        "labels": node.labels,
        "price_per_hour": node.price_per_hour,
        "created_at": iso(node.created_at),
        "age_seconds": max(0, int((now - node.created_at).total_seconds())),
        "ready_at": iso(node.ready_at),
        "idle_since": iso(node.idle_since),
        "interruption_deadline": iso(node.interruption_deadline),
        "terminated_at": iso(node.terminated_at),
    }


def _without_fleet(reason: str, fleet: FleetRef) -> str:
    # The fleet reconciler's reasons name the fleet ("fleet gpus changed").
    return reason.replace(f"fleet {fleet.name}", "its fleet")


def _gpu_view(node: NodeModel, gpu: dict[str, Any], holder: GpuHolder | None) -> dict[str, Any]:
    return {
        "index": int(gpu["index"]),
        "type": node.gpu_type,
        "healthy": bool(gpu.get("healthy", True)),
        "holder": holder.as_dict() if holder else None,
    }
