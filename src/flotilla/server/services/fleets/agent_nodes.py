"""Node rows for hosts that run their own agent: joined with `flo agent join`
(provider `agent`) or enrolled by an SSH fleet (provider `ssh`). Where their agent
listens is the `agent` label (`tls://HOST:PORT`); `address` is the host's address
(what other ranks and the load balancer connect to).

A row is `provisioning` until its agent first answers; the node reconciler
(`reconcilers/agent_nodes.py`) moves it on from there.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import NodeState, TaskStatus
from flotilla.errors import Conflict
from flotilla.server.db.models import NodeModel, RunModel, TaskModel
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.node_isolation import isolation_labels
from flotilla.server.services.fleets.nodes import find_node

AGENT_PROVIDERS = ("agent", "ssh")
AGENT_LABEL = "agent"
ACTIVE_TASKS = [s.value for s in TaskStatus if not s.is_finished()]


def endpoint_host(endpoint: str) -> str:
    """`tls://10.0.0.5:7477` -> `10.0.0.5` (`[v6]` unbracketed)."""
    rest = endpoint.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0].strip("[]")


async def register_agent_node(
    session: AsyncSession,
    *,
    name: str,
    endpoint: str,
    provider: str,
    fleet_id: str | None,
    labels: dict[str, Any],
    actor: str,
    now: datetime,
    replace: bool = False,
) -> NodeModel:
    """The live row for `name`, created `provisioning` or pointed at `endpoint`. A
    terminated row of that name keeps its history under a name of its own. A live
    row is only ever taken over by what made it: the same SSH fleet enrolling its
    host again, or a join whose token was made for that name (`replace`); anything
    else is a Conflict, so no host can take another node's name and its work."""
    node = await find_node(session, name)
    if node is not None and NodeState(node.state).is_gone():
        node.name = f"{name}~{node.id[:8]}"
        await session.flush()
        node = None
    if node is not None:
        same = node.provider == provider and node.fleet_id == fleet_id
        if not same or (provider == "agent" and not replace):
            raise Conflict(
                f"node {name} exists: a host joins under its name only with a token made "
                f"for it (flo agent token create --node {name}), and no fleet takes it"
            )
        node.labels = {**node.labels, **labels, AGENT_LABEL: endpoint}
        node.address = endpoint_host(endpoint)
        return node
    node = NodeModel(
        id=uuid.uuid4().hex,
        name=name,
        fleet_id=fleet_id,
        provider=provider,
        instance_id=name,
        request_id=None,
        instance_type=provider,
        region=provider,
        spot=False,
        state=NodeState.PROVISIONING.value,
        reason=f"waiting for its agent at {endpoint}",
        address=endpoint_host(endpoint),
        gpu_type=None,
        gpus=[],
        cpus=0,
        memory_bytes=0,
        # One network with no known fabric: a multi-node run may span its hosts
        # (an SSH fleet's hosts are their own partition, named by the fleet).
        labels={
            "partition": provider,
            "spine": provider,
            "leaf": name,
            "nvlink": name,
            **labels,
            AGENT_LABEL: endpoint,
        },
        price_per_hour=0.0,
        created_at=now,
        ready_at=None,
        idle_since=None,
        interruption_deadline=None,
        terminated_at=None,
    )
    session.add(node)
    await session.flush()
    record_event(
        session,
        kind="node",
        message=f"{name}: registered, agent at {endpoint}",
        actor=actor,
        now=now,
        node_id=node.id,
        recipe_id=fleet_id,
    )
    return node


async def agent_nodes(session: AsyncSession) -> list[NodeModel]:
    """Every live node with an agent of its own: joined and SSH hosts, and `sim`
    instances that are hosts of their own (`reconcilers/sim_hosts.py`)."""
    query = (
        select(NodeModel)
        .where(NodeModel.provider.in_([*AGENT_PROVIDERS, "sim"]))
        .where(NodeModel.state != NodeState.TERMINATED.value)
        .order_by(NodeModel.name)
    )
    rows = (await session.execute(query)).scalars()
    return [r for r in rows if r.provider in AGENT_PROVIDERS or r.labels.get(AGENT_LABEL)]


async def active_tasks_on(session: AsyncSession, node: str) -> Sequence[TaskModel]:
    """The current-attempt tasks placed on `node` that have not finished."""
    query = (
        select(TaskModel)
        .join(RunModel, RunModel.id == TaskModel.run_id)
        .where(TaskModel.node == node, TaskModel.attempt == RunModel.attempt)
        .where(TaskModel.status.in_(ACTIVE_TASKS))
    )
    return (await session.execute(query)).scalars().all()


async def runs_on(session: AsyncSession, node: str) -> Sequence[RunModel]:
    run_ids = {t.run_id for t in await active_tasks_on(session, node)}
    if not run_ids:
        return []
    query = select(RunModel).where(RunModel.id.in_(run_ids))
    return (await session.execute(query)).scalars().all()


def apply_inventory(
    node: NodeModel, hello: dict[str, Any], run_as_user: bool | None = None
) -> dict[int, str]:
    """What the agent said about its host, onto the row; its isolation as the
    agent probed it and as its tasks get it with FLOTILLA_RUN_AS_USER (`run_as_user`,
    `services/fleets/node_isolation.py`). Returns the GPUs that NVML
    newly reports unhealthy, with why. Unhealthy stays unhealthy (until the node is
    registered anew): a GPU that threw an XID is not trusted again by itself."""
    inventory = hello.get("inventory") or {}
    gpus = inventory.get("gpus") or []
    problems = {int(g["index"]): str(g["problem"]) for g in hello.get("gpu_health") or []}
    was = {int(g["index"]): bool(g.get("healthy", True)) for g in node.gpus}
    node.gpu_type = str(gpus[0]["type"]) if gpus else None
    node.gpus = [
        {
            "index": int(g["index"]),
            "healthy": was.get(int(g["index"]), True) and not problems.get(int(g["index"])),
        }
        for g in gpus
    ]
    newly = {i: why for i, why in problems.items() if why and was.get(i, True)}
    node.cpus = int(inventory.get("cpus") or 0)
    node.memory_bytes = int(inventory.get("memory_bytes") or 0)
    isolation = hello.get("isolation") or {}
    level, why = str(isolation.get("level", "unknown")), str(isolation.get("reason", ""))
    probe = level if level == "full" or not why else f"{level} ({why})"
    node.labels = {
        **node.labels,
        "hostname": str(hello.get("hostname", "")),
        "agent_version": str(hello.get("version", "")),
        "gpu_source": str(inventory.get("gpu_source", "")),
        **isolation_labels(probe, run_as_user),
        "gpu_fencing": str(isolation.get("gpu_fencing", "none (not reported)")),
    }
    return newly


async def runs_on_gpu(session: AsyncSession, node: str, gpu: int) -> Sequence[RunModel]:
    """The runs whose current task on `node` holds GPU `gpu`."""
    run_ids = {t.run_id for t in await active_tasks_on(session, node) if gpu in (t.gpus or [])}
    if not run_ids:
        return []
    query = select(RunModel).where(RunModel.id.in_(run_ids))
    return (await session.execute(query)).scalars().all()
