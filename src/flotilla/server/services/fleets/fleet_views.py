"""The API views of fleets and offers. Read-only; called by `routers/fleets.py`,
`routers/offers.py` and `routers/recipes.py` (a fleet recipe's `state`).

The desired size shown is computed the way the reconciler computes it, from the
same snapshot, so the API and the reconciler cannot disagree about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.provider import Offer, Provider
from flotilla.core import autoscale
from flotilla.core.status import NodeState
from flotilla.core.units import parse_gpu
from flotilla.errors import ClientError, NotFound
from flotilla.server.identity import Identity
from flotilla.server.services.fleets.fleets import (
    FLEET_ERROR,
    FLEET_WAITING,
    FleetSnapshot,
    FleetState,
    load_fleets,
)
from flotilla.server.services.views import iso


async def fleet_views(
    session: AsyncSession,
    providers: Mapping[str, Provider],
    identity: Identity,
    name: str | None = None,
) -> list[dict[str, Any]]:
    """The fleets the caller may see (their own, their groups', their projects')."""
    snapshot = await load_fleets(session, providers, [name] if name is not None else None)
    desired = snapshot.desired()
    return [
        fleet_view(f, snapshot, desired[f.recipe.id])
        for f in snapshot.fleets
        if identity.can_read(f.recipe.owner, f.recipe.project)
    ]


async def fleet_view_by_name(
    session: AsyncSession, providers: Mapping[str, Provider], identity: Identity, name: str
) -> dict[str, Any]:
    views = await fleet_views(session, providers, identity, name)
    if not views:
        raise NotFound(f"fleet {name!r}")
    return views[0]


def fleet_view(fleet: FleetState, snapshot: FleetSnapshot, desired: int) -> dict[str, Any]:
    spec, offer = fleet.spec, fleet.offer
    low, high = spec.node_range()
    by_state: dict[str, int] = {}
    for node in fleet.members:
        by_state[node.state] = by_state.get(node.state, 0) + 1
    members = snapshot.members(fleet)
    return {
        "id": fleet.recipe.id,
        "name": fleet.recipe.name,
        "owner": fleet.recipe.owner,
        "version": fleet.recipe.version,
        "provider": spec.provider,
        "instance_type": spec.instance_type,
        "region": fleet.region,
        "gpu_type": offer.gpu_type if offer else None,
        "gpus_per_node": offer.gpus if offer else None,
        "nodes": spec.nodes,
        "min": low,
        "max": high,
        "placement": spec.placement.value,
        "spot": spec.spot,
        "idle_timeout": spec.idle_timeout,
        "spares": spec.spares,
        "status": fleet_status(fleet, desired),
        "reason": fleet.reason,
        "desired": desired,
        "size": autoscale.current_size(members),
        "busy": sum(1 for m in members if m.busy),
        "nodes_by_state": by_state,
        "price_per_hour": round(sum(n.price_per_hour for n in fleet.members), 4),
        "members": [
            {
                "name": n.name,
                "state": n.state,
                "reason": n.reason,
                "instance_id": n.instance_id,
                "busy": n.name in snapshot.busy,
                "price_per_hour": n.price_per_hour,
                "created_at": iso(n.created_at),
                "ready_at": iso(n.ready_at),
                "idle_since": iso(n.idle_since),
                "interruption_deadline": iso(n.interruption_deadline),
            }
            for n in fleet.members
        ],
    }


def fleet_status(fleet: FleetState, desired: int) -> str:
    """One word: error, waiting, provisioning, scaling, ready or empty."""
    if fleet.offer is None or (fleet.reason and fleet.reason_kind == FLEET_ERROR):
        return "error"
    if fleet.reason and fleet.reason_kind == FLEET_WAITING:
        return "waiting"
    states = [n.state for n in fleet.members]
    if NodeState.PROVISIONING.value in states:
        return "provisioning"
    up = sum(1 for s in states if s == NodeState.READY.value)
    if up < desired:
        return "scaling"
    return "ready" if fleet.members else "empty"


async def fleet_recipe_states(
    session: AsyncSession, providers: Mapping[str, Provider], recipe_ids: set[str]
) -> dict[str, dict[str, Any]]:
    """The `state` part of fleet recipes (what `flo list` and `GET /api/recipes`
    show): status, reason and sizes instead of a job's runs."""
    if not recipe_ids:
        return {}
    snapshot = await load_fleets(session, providers)
    desired = snapshot.desired()
    out = {}
    for fleet in snapshot.fleets:
        if fleet.recipe.id in recipe_ids:
            view = fleet_view(fleet, snapshot, desired[fleet.recipe.id])
            out[fleet.recipe.id] = {
                "id": fleet.recipe.id,
                "status": view["status"],
                "reason": view["reason"],
                "version": fleet.recipe.version,
                "created_at": iso(fleet.recipe.created_at),
                "updated_at": iso(fleet.recipe.updated_at),
                "desired": view["desired"],
                "size": view["size"],
                "nodes_by_state": view["nodes_by_state"],
                "price_per_hour": view["price_per_hour"],
            }
    return out


def offer_views(
    providers: Mapping[str, Provider],
    gpu: str | None = None,
    region: str | None = None,
    spot: bool = False,
) -> list[dict[str, Any]]:
    """Every provider's offers, cheapest first; `gpu` is `H100`, `H100:8` or `8`,
    `spot` keeps only offers with a spot price."""
    gpu_type, count = None, None
    text = (gpu or "").strip()
    if text and (":" in text or text.isdigit()):
        try:
            request = parse_gpu(text)
        except ValueError as e:
            raise ClientError(f"gpu: {e}", "invalid_request", 422) from e
        gpu_type, count = request.type, request.count
    elif text:
        gpu_type = text.upper()  # a bare type: `H100`
    out = []
    for name, provider in sorted(providers.items()):
        for offer in provider.offers(gpu_type=gpu_type, region=region):
            if count is not None and offer.gpus != count:
                continue
            if spot and offer.spot_per_hour is None:
                continue
            out.append(offer_view(name, offer))
    return sorted(
        out, key=lambda o: (o["gpu_type"], o["gpus"], o["on_demand_per_hour"], o["region"])
    )


def offer_view(provider: str, offer: Offer) -> dict[str, Any]:
    return {
        "provider": provider,
        "instance_type": offer.instance_type,
        "gpu_type": offer.gpu_type,
        "gpus": offer.gpus,
        "region": offer.region,
        "on_demand_per_hour": offer.on_demand_per_hour,
        "spot_per_hour": offer.spot_per_hour,
        "available": offer.available,
        "price_published": offer.price_published,
    }
