"""Fleets: list them with their desired size, nodes by state, reason and price;
read one; delete one (its nodes are released by the fleet reconciler). Fleets are
created and changed like any recipe, through `PUT /api/recipes`."""

from __future__ import annotations

from fastapi import APIRouter, Response

from flotilla.api.base import errors
from flotilla.api.fleets import Fleet, FleetList
from flotilla.recipes.types import FLEET
from flotilla.server.changes import Change
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.fleets.fleet_views import fleet_view_by_name, fleet_views
from flotilla.server.services.fleets.fleets import delete_fleet

router = APIRouter(prefix="/api/fleets", tags=["fleets"])


@router.get("", responses=errors())
async def list_fleets(ctx: Ctx, caller: Caller) -> FleetList:
    async with ctx.sessions() as session:
        views = await fleet_views(session, ctx.providers, caller)
    return FleetList.model_validate({"fleets": views})


@router.get("/{name}", responses=errors(404))
async def get_fleet(ctx: Ctx, caller: Caller, name: str) -> Fleet:
    async with ctx.sessions() as session:
        return Fleet.model_validate(await fleet_view_by_name(session, ctx.providers, caller, name))


@router.delete("/{name}", status_code=204, responses=errors(403, 404))
async def delete(ctx: Ctx, caller: Caller, name: str, owner_name: str | None = None) -> Response:
    """Delete the fleet. Idle nodes are terminated at once; busy ones are drained
    first, so their work is requeued elsewhere."""
    async with ctx.transaction() as session:
        fleet = await recipe_service.get_recipe(
            session, FLEET, name, owner_name, caller, write=True
        )
        await delete_fleet(session, fleet, caller.name, ctx.clock.now())
    ctx.changes.announce(Change.FLEETS)
    return Response(status_code=204)
