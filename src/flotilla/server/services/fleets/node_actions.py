"""Admin actions on a node: cordon, uncordon, drain, terminate. Called by
`routers/nodes.py`.

Each action is a state change through `switch_node_state`, so it is checked
against the lifecycle and recorded with who and why. What a state means for the
work on the node is the scheduler's business: it places new work only on `ready`
nodes, stops and requeues the work of a `draining` node and then switches it to
`cordoned`. Here we only change the state and wake the reconcilers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.provider import ProviderError
from flotilla.core.status import NodeState
from flotilla.errors import Conflict, NotFound
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import NodeModel
from flotilla.server.identity import Identity
from flotilla.server.services.fleets.nodes import LOCAL_NODE, switch_node_state


class NodeAction(StrEnum):
    CORDON = "cordon"
    UNCORDON = "uncordon"
    DRAIN = "drain"
    TERMINATE = "terminate"


@dataclass(frozen=True)
class _Rule:
    target: NodeState
    sources: frozenset[NodeState]
    # Whether issuing the action again on a node already in `target` is a no-op.
    idempotent: bool = True


_RULES: dict[NodeAction, _Rule] = {
    NodeAction.CORDON: _Rule(NodeState.CORDONED, frozenset({NodeState.READY})),
    # Not idempotent: a ready node was never cordoned, so "uncordon" on it most
    # likely names the wrong node; say so rather than succeed silently.
    NodeAction.UNCORDON: _Rule(
        NodeState.READY, frozenset({NodeState.CORDONED, NodeState.DRAINING}), idempotent=False
    ),
    NodeAction.DRAIN: _Rule(NodeState.DRAINING, frozenset({NodeState.READY, NodeState.CORDONED})),
    NodeAction.TERMINATE: _Rule(
        NodeState.TERMINATED, frozenset(s for s in NodeState if not s.is_gone())
    ),
}


async def act_on_node(
    ctx: ServerContext, name: str, action: NodeAction, reason: str | None, caller: Identity
) -> None:
    """Apply `action` to node `name`. NotFound for an unknown node, Conflict for a
    state the action does not apply to; re-issuing an action the node already
    reflects changes nothing."""
    why = reason.strip() if reason and reason.strip() else f"by {caller.name}"
    if action == NodeAction.TERMINATE:
        await _terminate(ctx, name, why, caller)
    else:
        async with ctx.transaction() as session:
            node = await _locked_node(session, name)
            if _check(node, action):
                switch_node_state(
                    session,
                    node,
                    _RULES[action].target,
                    reason=why,
                    actor=caller.name,
                    now=ctx.clock.now(),
                )
    # Uncordon frees capacity, drain has work to requeue, terminate may leave a
    # fleet short: let the loops see it now rather than at their next resync.
    ctx.changes.announce(Change.NODES_CHANGED)


async def _terminate(ctx: ServerContext, name: str, why: str, caller: Identity) -> None:
    async with ctx.sessions() as session:
        node = await _locked_node(session, name, lock=False)
        if node.name == LOCAL_NODE:
            raise Conflict("the local node is this machine; cordon it instead")
        if not _check(node, NodeAction.TERMINATE):
            return
        provider_name, instance_id = node.provider, node.instance_id
    provider = ctx.providers.get(provider_name)
    if provider is None:
        # Marking it terminated without the provider could leave a paid instance
        # running that nothing tracks any more.
        raise Conflict(
            f"node {name}: provider {provider_name!r} is not configured on this server, "
            "so its instance cannot be released"
        )
    if instance_id:
        # Outside any transaction: a real cloud call may take a while. Idempotent,
        # so a crash before the state change below is repaired by terminating again.
        # A TemporaryError propagates (503, try again).
        try:
            provider.terminate(instance_id, ctx.clock.now())
        except ProviderError as e:
            raise Conflict(f"node {name}: provider {provider_name} refused: {e}") from e
    async with ctx.transaction() as session:
        node = await _locked_node(session, name)
        switch_node_state(
            session, node, NodeState.TERMINATED, reason=why, actor=caller.name, now=ctx.clock.now()
        )


def _check(node: NodeModel, action: NodeAction) -> bool:
    """True if the action changes the node, False if it is a repeat; Conflict if
    the node's state does not allow it."""
    rule = _RULES[action]
    current = NodeState(node.state)
    if current == rule.target and rule.idempotent:
        return False
    if current not in rule.sources:
        allowed = " or ".join(sorted(s.value for s in rule.sources))
        raise Conflict(f"cannot {action} node {node.name}: it is {current} (needs {allowed})")
    return True


async def _locked_node(session: AsyncSession, name: str, *, lock: bool = True) -> NodeModel:
    # The row lock (PostgreSQL; SQLite serializes writers anyway) keeps the check
    # and the switch atomic against the scheduler moving a draining node on.
    query = select(NodeModel).where(NodeModel.name == name)
    if lock:
        query = query.with_for_update()
    node = (await session.execute(query)).scalars().first()
    if node is None:
        raise NotFound(f"node {name!r}")
    return node
