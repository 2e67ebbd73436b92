"""The fleet reconciler's decision: from one `FleetSnapshot`, what to provision,
which nodes to release or drain, whose idle time to write and which fleet reasons
changed. No I/O; `reconcilers/fleets.py` applies the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from flotilla.core import autoscale
from flotilla.core.status import NodeState
from flotilla.recipes.fleet import Placement
from flotilla.server.db.models import NodeModel
from flotilla.server.services.fleets.fleets import (
    FLEET_ERROR,
    FLEET_OK,
    SCALING_DOWN,
    FleetSnapshot,
    FleetState,
    stale,
)

# States in which a node's idle time means something (it could take work or has some).
_IDLE_STATES = {NodeState.READY.value, NodeState.CORDONED.value, NodeState.DRAINING.value}


@dataclass(frozen=True)
class Provision:
    fleet_id: str
    fleet_name: str
    version: int  # of the recipe: a back-off ends when the recipe changes
    provider: str
    # `<fleet id>-<n>` with n one past the fleet's counter (RecipeModel.run_counter,
    # which counts requests for a fleet). The counter moves only in the transaction
    # that records the request's outcome, so a retry after a crash reuses the id and
    # the provider answers with the instances it already created.
    request_id: str
    sequence: int
    instance_type: str
    region: str
    count: int
    spot: bool
    cluster: bool


@dataclass(frozen=True)
class Release:
    node_id: str
    reason: str


@dataclass
class Plan:
    provision: list[Provision] = field(default_factory=list)
    release: list[Release] = field(default_factory=list)
    drain: list[Release] = field(default_factory=list)
    idle: dict[str, datetime | None] = field(default_factory=dict)
    # (fleet id, event kind, message): fleet reasons that change
    status: list[tuple[str, str, str]] = field(default_factory=list)


def decide(snapshot: FleetSnapshot, now: datetime, backing_off: set[str]) -> Plan:
    plan = Plan()
    desired = snapshot.desired()
    for fleet in snapshot.fleets:
        _idle_times(plan, snapshot, fleet.members, now)
        _release_unwanted(plan, snapshot, fleet)
        shape = fleet.shape
        if shape is None:
            _set_reason(plan, fleet, FLEET_ERROR, _unusable(fleet))
            continue
        members = snapshot.members(fleet)
        want, have = desired[fleet.recipe.id], autoscale.current_size(members)
        if want > have and fleet.recipe.id not in backing_off:
            plan.provision.append(_provision(fleet, want - have))
        elif want <= have and fleet.reason:
            _set_reason(plan, fleet, FLEET_OK, f"no longer waiting: {have} of {want} nodes up")
        idle_timeout = fleet.spec.idle_timeout_seconds()
        for node_id, why in autoscale.scale_down(shape, members, want, idle_timeout, now):
            plan.release.append(Release(node_id, why))
    _orphans(plan, snapshot, now)
    return plan


def _provision(fleet: FleetState, count: int) -> Provision:
    assert fleet.region is not None
    sequence = fleet.recipe.run_counter + 1
    return Provision(
        fleet.recipe.id,
        fleet.recipe.name,
        fleet.recipe.version,
        fleet.spec.provider,
        f"{fleet.recipe.id}-{sequence}",
        sequence,
        fleet.spec.instance_type,
        fleet.region,
        count,
        fleet.spec.spot,
        fleet.spec.placement == Placement.CLUSTER,
    )


def _idle_times(plan: Plan, snapshot: FleetSnapshot, nodes: list[NodeModel], now: datetime) -> None:
    for node in nodes:
        if node.state not in _IDLE_STATES:
            continue
        since = None if node.name in snapshot.busy else (node.idle_since or now)
        if since != node.idle_since:
            plan.idle[node.id] = since


def _release_unwanted(plan: Plan, snapshot: FleetSnapshot, fleet: FleetState) -> None:
    for node in fleet.members:
        if stale(fleet, node) and node.name not in snapshot.busy:
            plan.release.append(Release(node.id, f"fleet {fleet.recipe.name} changed"))
        elif node.state == NodeState.FAILED.value:
            # Its work is requeued by the scheduler's recovery whether the node is
            # failed or terminated; release the instance and let a new one replace it.
            plan.release.append(Release(node.id, f"replacing failed node ({node.reason})"))
        elif (
            node.state == NodeState.CORDONED.value
            and node.reason.startswith(SCALING_DOWN)
            and node.name not in snapshot.busy
        ):
            # Cordoned on its way out by an earlier step that did not finish.
            why = node.reason.removeprefix(SCALING_DOWN).removeprefix(": ")
            plan.release.append(Release(node.id, why or "scaled down"))


def _orphans(plan: Plan, snapshot: FleetSnapshot, now: datetime) -> None:
    """Nodes of deleted fleets: idle ones go now; busy ones are drained first so
    that their work is stopped and requeued rather than killed with the node."""
    _idle_times(plan, snapshot, snapshot.orphans, now)
    for node in snapshot.orphans:
        busy = node.name in snapshot.busy
        if not busy:
            plan.release.append(Release(node.id, "its fleet was deleted"))
        elif node.state in (NodeState.READY.value, NodeState.CORDONED.value):
            plan.drain.append(Release(node.id, "its fleet was deleted"))


def _set_reason(plan: Plan, fleet: FleetState, kind: str, message: str) -> None:
    current = "" if kind == FLEET_OK else message
    if fleet.reason != current or (kind != FLEET_OK and fleet.reason_kind != kind):
        plan.status.append((fleet.recipe.id, kind, message))


def _unusable(fleet: FleetState) -> str:
    spec = fleet.spec
    if fleet.provider is None:
        return f"provider '{spec.provider}' is not configured on this server"
    if fleet.region is None:
        return f"no region given and {spec.instance_type} is offered in several"
    return f"{spec.provider} no longer offers {spec.instance_type} in {fleet.region}"
