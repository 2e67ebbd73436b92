"""Fleets as the reconciler and the API see them: one load of every live fleet with
its nodes, the nodes holding work and the pending queue's GPU demand; deleting a
fleet. Apply-time checks are in `fleet_checks.py`, the API views in
`fleet_views.py`, the reconciler's decision in `fleet_plan.py`.

Called by `reconcilers/fleets.py` (load, then the pure sizing in `core.autoscale`)
and by the fleet views. Two pieces of fleet state live in existing rows rather
than new columns: the fleet's reason (why it waits) is the message of its latest
fleet status event, so it survives restarts and its history is the event log; and
the count of provisioning requests made for the fleet is the recipe's
`run_counter` (a fleet has no runs), from which request ids are derived.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.provider import Offer, Provider
from flotilla.core import autoscale
from flotilla.core.queue import QUEUED, held_by_quota, scheduler_has_looked
from flotilla.core.status import HOLDING, NodeState, RunStatus
from flotilla.core.units import parse_gpu
from flotilla.recipes.fleet import SSH, FleetSpec
from flotilla.recipes.types import FLEET
from flotilla.server.db.models import EventModel, NodeModel, RecipeModel, RunModel, TaskModel
from flotilla.server.services.fleets.nodes import LIVE_STATES
from flotilla.server.services.recipes import mark_deleted

# Fleet status events: the latest one is the fleet's reason ("" after FLEET_OK).
FLEET_WAITING = "fleet_waiting"  # no capacity now; retried after the provider's delay
FLEET_ERROR = "fleet_error"  # the provider refused the request as made
FLEET_OK = "fleet_ok"
STATUS_KINDS = (FLEET_WAITING, FLEET_ERROR, FLEET_OK)
# The reason of a ready node cordoned on its way out, so that a crash between the
# cordon and the provider's terminate is finished on the next step.
SCALING_DOWN = "scaling down"
# Pending runs read at a time for the fleets' demand (`pending_demand`).
DEMAND_PAGE = 1000


@dataclass
class FleetState:
    recipe: RecipeModel
    spec: FleetSpec
    provider: Provider | None
    region: str | None
    offer: Offer | None  # its instance type in its region; None: cannot provision
    members: list[NodeModel] = field(default_factory=list)
    reason: str = ""
    reason_kind: str = FLEET_OK

    @property
    def shape(self) -> autoscale.FleetShape | None:
        if self.offer is None:
            return None
        low, high = self.spec.node_range()
        price = self.offer.spot_per_hour if self.spec.spot else self.offer.on_demand_per_hour
        return autoscale.FleetShape(
            self.recipe.id,
            self.recipe.name,
            low,
            high,
            self.spec.spares,
            self.offer.gpu_type,
            self.offer.gpus,
            self.spec.spot,
            price or self.offer.on_demand_per_hour,
        )


@dataclass
class FleetSnapshot:
    fleets: list[FleetState]
    orphans: list[NodeModel]  # live nodes of deleted fleets
    busy: set[str]  # names of nodes a run holds
    demands: list[autoscale.Demand]
    # Fleets whose stored spec no longer validates, with why: left out of the plan,
    # and so are their nodes (neither grown, shrunk nor released as orphans).
    broken: dict[str, str] = field(default_factory=dict)

    def members(self, fleet: FleetState) -> list[autoscale.Member]:
        return [member(n, n.name in self.busy, stale(fleet, n)) for n in fleet.members]

    def desired(self) -> dict[str, int]:
        """Desired size per fleet id (fleets that cannot provision keep their MIN)."""
        shapes = [s for s in (f.shape for f in self.fleets) if s is not None]
        busy = {f.recipe.id: sum(1 for n in f.members if n.name in self.busy) for f in self.fleets}
        wanted = autoscale.assign_demand(shapes, busy, self.demands)
        out = {}
        for fleet in self.fleets:
            shape = fleet.shape
            if shape is None:
                out[fleet.recipe.id] = fleet.spec.node_range()[0]
            else:
                out[fleet.recipe.id] = autoscale.desired_size(
                    shape, busy[fleet.recipe.id], wanted[fleet.recipe.id]
                )
        return out


def member(node: NodeModel, busy: bool, stale: bool = False) -> autoscale.Member:
    state = NodeState(node.state)
    leaving = (
        stale
        or state == NodeState.FAILED
        or node.interruption_deadline is not None
        or (state == NodeState.CORDONED and node.reason.startswith(SCALING_DOWN))
    )
    return autoscale.Member(node.id, state.is_schedulable(), busy, node.idle_since, not leaving)


def stale(fleet: FleetState, node: NodeModel) -> bool:
    """A node of what the fleet was before its recipe changed (another instance type,
    region or pricing): replaced, and released once it holds no work."""
    return (
        node.instance_type != fleet.spec.instance_type
        or (fleet.region is not None and node.region != fleet.region)
        or node.spot != fleet.spec.spot
    )


def resolve_region(spec: FleetSpec, offers: Sequence[Offer]) -> str | None:
    """The fleet's region: as given, or the only region offering its type."""
    if spec.region is not None:
        return spec.region
    regions = sorted({o.region for o in offers if o.instance_type == spec.instance_type})
    return regions[0] if len(regions) == 1 else None


def fleet_offer(provider: Provider, spec: FleetSpec, region: str | None) -> Offer | None:
    if region is None:
        return None
    for offer in provider.offers(region=region):
        if offer.instance_type == spec.instance_type:
            return offer
    return None


def fleet_state(recipe: RecipeModel, providers: Mapping[str, Provider]) -> FleetState:
    spec = FleetSpec.model_validate(recipe.spec)
    provider = providers.get(spec.provider)
    if provider is None:
        return FleetState(recipe, spec, None, spec.region, None)
    # Listing every offer only to find the region when the recipe names none.
    region = spec.region if spec.region is not None else resolve_region(spec, provider.offers())
    return FleetState(recipe, spec, provider, region, fleet_offer(provider, spec, region))


async def load_fleets(
    session: AsyncSession,
    providers: Mapping[str, Provider],
    names: Sequence[str] | None = None,
    *,
    planning: bool = False,
) -> FleetSnapshot:
    """Every live fleet (or those named) with its live nodes and reason, the nodes
    of deleted fleets, which nodes hold work, and the GPU demand of pending runs.
    `planning` (the fleet reconciler) leaves out SSH fleets and their nodes: their
    hosts are kept by `reconcilers/ssh_fleets.py`."""
    query = select(RecipeModel).where(RecipeModel.type == FLEET, RecipeModel.deleted_at.is_(None))
    if names is not None:
        query = query.where(RecipeModel.name.in_(names))
    recipes = (await session.execute(query.order_by(RecipeModel.name))).scalars().all()
    fleets: dict[str, FleetState] = {}
    broken: dict[str, str] = {}
    for recipe in recipes:
        if planning and recipe.spec.get("provider") == SSH:
            continue
        try:
            fleets[recipe.id] = fleet_state(recipe, providers)
        except ValidationError as e:  # one bad row must not stop every fleet
            broken[recipe.id] = " ".join(str(e).split())[:500]
    nodes = (
        await session.execute(
            select(NodeModel)
            .where(NodeModel.fleet_id.is_not(None), NodeModel.state.in_(LIVE_STATES))
            .order_by(NodeModel.created_at, NodeModel.name)
        )
    ).scalars()
    orphans = []
    for node in nodes:
        if planning and node.provider == SSH:
            continue
        if node.fleet_id in fleets:
            fleets[node.fleet_id].members.append(node)
        elif names is None and node.fleet_id not in broken:
            orphans.append(node)
    for fleet_id, (kind, message) in (await fleet_reasons(session, list(fleets))).items():
        fleets[fleet_id].reason_kind = kind
        fleets[fleet_id].reason = "" if kind == FLEET_OK else message
    if not fleets and not orphans:
        # the common case without fleets: no queries
        return FleetSnapshot([], [], set(), [], broken)
    # The holders first, then the queue: a run placed in between (each statement
    # sees its own commit point on PostgreSQL) then counts in neither, one step late
    # to grow a fleet, rather than in both, a node too many. A release checks its
    # node again (`reconcilers/fleets.py`).
    busy = await busy_nodes(session)
    shapes = [s for s in (f.shape for f in fleets.values()) if s is not None]
    held = {f.recipe.id: sum(1 for n in f.members if n.name in busy) for f in fleets.values()}
    demands = await pending_demand(session, shapes, held)
    return FleetSnapshot(list(fleets.values()), orphans, busy, demands, broken)


async def busy_nodes(session: AsyncSession, node: str | None = None) -> set[str]:
    """Nodes a run holds: a current-attempt task of a run in provisioning, starting
    or running is placed there (the scheduler's own rule)."""
    query = (
        select(TaskModel.node)
        .join(RunModel, RunModel.id == TaskModel.run_id)
        .where(RunModel.status.in_(HOLDING), TaskModel.attempt == RunModel.attempt)
        .where(TaskModel.node.is_not(None))
    )
    if node is not None:
        query = query.where(TaskModel.node == node)
    return {name for (name,) in await session.execute(query.distinct()) if name}


async def pending_demand(
    session: AsyncSession, shapes: Sequence[autoscale.FleetShape], busy: dict[str, int]
) -> list[autoscale.Demand]:
    """The GPU demand of pending runs the scheduler could not place, oldest first,
    read page by page only as long as some fleet of `shapes` could still grow for
    it (a fixed fleet never does): a deep queue costs no more than the fleets'
    room. Runs without GPUs never grow a fleet: they fit on whatever node is up;
    nor do runs a quota holds back, or that the scheduler has not looked at yet (it
    may find them held back): new nodes would stand idle, and billed."""
    out: list[autoscale.Demand] = []
    after: tuple[datetime, str] | None = None
    while autoscale.can_grow(shapes, busy, autoscale.assign_demand(shapes, busy, out)):
        query = (
            select(RunModel.id, RunModel.spec, RunModel.reason, RunModel.queued_at)
            # Not yet looked at: the database passes over it (`_demand`).
            .where(RunModel.status == RunStatus.PENDING.value, RunModel.reason != QUEUED)
            .order_by(RunModel.queued_at, RunModel.id)
            .limit(DEMAND_PAGE)
        )
        if after is not None:
            query = query.where(tuple_(RunModel.queued_at, RunModel.id) > after)
        rows = (await session.execute(query)).all()
        out.extend(d for d in (_demand(r.id, r.spec, r.reason) for r in rows) if d is not None)
        if len(rows) < DEMAND_PAGE:
            break
        after = (rows[-1].queued_at, rows[-1].id)
    return out


def _demand(run_id: str, spec: dict[str, Any], reason: str) -> autoscale.Demand | None:
    # Until the scheduler has looked, a quota may yet hold it back: a node grown
    # for it then would stand idle (the fleet loop can run first).
    if not scheduler_has_looked(reason) or held_by_quota(reason):
        return None
    gpu = (spec.get("resources") or {}).get("gpu")
    try:
        request = parse_gpu(gpu) if gpu is not None else None
    except ValueError:
        return None  # validated at apply; a stored spec that no longer parses waits
    if request is None or request.count <= 0:
        return None
    tasks = int(spec.get("scale") or 1)
    spot = bool(spec.get("use_spot_instance"))
    return autoscale.Demand(run_id, request.type, request.count, tasks, spot)


async def fleet_reasons(session: AsyncSession, fleet_ids: list[str]) -> dict[str, tuple[str, str]]:
    """(kind, message) of each fleet's latest status event."""
    if not fleet_ids:
        return {}
    latest = (
        select(func.max(EventModel.id))
        .where(EventModel.recipe_id.in_(fleet_ids), EventModel.kind.in_(STATUS_KINDS))
        .group_by(EventModel.recipe_id)
    )
    rows = await session.execute(
        select(EventModel.recipe_id, EventModel.kind, EventModel.message).where(
            EventModel.id.in_(latest)
        )
    )
    return {recipe_id: (kind, message) for recipe_id, kind, message in rows if recipe_id}


async def delete_fleet(
    session: AsyncSession, recipe: RecipeModel, actor: str, now: datetime
) -> None:
    """Soft-delete the recipe. Its nodes are released by the fleet reconciler, which
    treats the nodes of a deleted fleet as orphans: idle ones are terminated at once,
    busy ones drained first (their work is requeued elsewhere)."""
    mark_deleted(session, recipe, actor, now)
