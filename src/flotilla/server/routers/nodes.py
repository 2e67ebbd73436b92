"""Nodes: list and describe them, the admin actions cordon, uncordon, drain and
terminate, and who is trusted on a node that cannot isolate tasks. Each action
answers with the node's view after it."""

from __future__ import annotations

from fastapi import APIRouter

from flotilla.api.base import errors
from flotilla.api.nodes import NodeActionRequest, NodeDetail, NodeList, TrustRequest
from flotilla.core.status import NodeState
from flotilla.server.changes import Change
from flotilla.server.identity import Identity
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.fleets.node_actions import NodeAction, act_on_node
from flotilla.server.services.fleets.node_trust import set_trusted
from flotilla.server.services.fleets.node_views import list_node_views, node_detail

router = APIRouter(prefix="/api/nodes", tags=["nodes"])


@router.get("", responses=errors(422))
async def list_nodes(
    ctx: Ctx,
    caller: Caller,
    state: NodeState | None = None,
    fleet: str | None = None,
    gpu_type: str | None = None,
) -> NodeList:
    """Every node that is not terminated (or those in `state`), by name."""
    async with ctx.sessions() as session:
        views = await list_node_views(
            session, caller, ctx.clock.now(), state=state, fleet=fleet, gpu_type=gpu_type
        )
    return NodeList.model_validate({"nodes": views})


@router.get("/{name}", responses=errors(404))
async def get_node(ctx: Ctx, caller: Caller, name: str) -> NodeDetail:
    """One node with its GPUs' holders and its events."""
    async with ctx.sessions() as session:
        return NodeDetail.model_validate(await node_detail(session, caller, name, ctx.clock.now()))


@router.post("/{name}/cordon", responses=errors(403, 404, 409, 422))
async def cordon(
    ctx: Ctx, caller: Caller, name: str, body: NodeActionRequest | None = None
) -> NodeDetail:
    """No new work; what runs there keeps running."""
    return await _act(ctx, caller, name, NodeAction.CORDON, body)


@router.post("/{name}/uncordon", responses=errors(403, 404, 409, 422))
async def uncordon(
    ctx: Ctx, caller: Caller, name: str, body: NodeActionRequest | None = None
) -> NodeDetail:
    """Back to `ready` from `cordoned` or `draining`."""
    return await _act(ctx, caller, name, NodeAction.UNCORDON, body)


@router.post("/{name}/drain", responses=errors(403, 404, 409, 422))
async def drain(
    ctx: Ctx, caller: Caller, name: str, body: NodeActionRequest | None = None
) -> NodeDetail:
    """No new work, and the node's runs are stopped (grace period) and requeued;
    the node ends `cordoned`."""
    return await _act(ctx, caller, name, NodeAction.DRAIN, body)


@router.post("/{name}/terminate", responses=errors(403, 404, 409, 422))
async def terminate(
    ctx: Ctx, caller: Caller, name: str, body: NodeActionRequest | None = None
) -> NodeDetail:
    """Release the instance at its provider; its runs are requeued elsewhere."""
    return await _act(ctx, caller, name, NodeAction.TERMINATE, body)


@router.put("/{name}/trusted", responses=errors(403, 404, 422))
async def trust(ctx: Ctx, caller: Caller, name: str, body: TrustRequest) -> NodeDetail:
    """Whose work the node runs while it cannot isolate tasks (its `isolation`
    label is not `full`): admins' and these users' and groups' members'."""
    caller.require_admin()
    async with ctx.transaction() as session:
        await set_trusted(session, name, body.users, body.groups, caller.name, ctx.clock.now())
    ctx.changes.announce(Change.NODES_CHANGED)  # runs that waited for this may start now
    async with ctx.sessions() as session:
        return NodeDetail.model_validate(await node_detail(session, caller, name, ctx.clock.now()))


async def _act(
    ctx: Ctx, caller: Identity, name: str, action: NodeAction, body: NodeActionRequest | None
) -> NodeDetail:
    caller.require_admin()  # before anything changes
    await act_on_node(ctx, name, action, body.reason if body else None, caller)
    async with ctx.sessions() as session:
        return NodeDetail.model_validate(await node_detail(session, caller, name, ctx.clock.now()))
