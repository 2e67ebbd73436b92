"""Load balancers: list them with their listeners and backends (state, connections,
bytes, health history), read one, delete one (its connections drain). They are
created and changed like any recipe, through `PUT /api/recipes`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from flotilla.server.db.models import RecipeModel
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.load_balancers import LOAD_BALANCER, load_balancer_state, plane_key

router = APIRouter(prefix="/api/load_balancers", tags=["load balancers"])


def _view(ctx: Ctx, recipe: RecipeModel) -> dict[str, Any]:
    return {
        "id": recipe.id,
        "name": recipe.name,
        "owner": recipe.owner,
        "project": recipe.project,
        "spec": recipe.spec,
        **load_balancer_state(ctx.lb_plane, plane_key(recipe)),
    }


@router.get("")
async def list_load_balancers(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    async with ctx.sessions() as session:
        recipes = await recipe_service.list_recipes(session, caller, LOAD_BALANCER)
    return {"load_balancers": [_view(ctx, r) for r in recipes]}


@router.get("/{name}")
async def get_load_balancer(
    ctx: Ctx, caller: Caller, name: str, owner_name: str | None = None
) -> dict[str, Any]:
    async with ctx.sessions() as session:
        recipe = await recipe_service.get_recipe(session, LOAD_BALANCER, name, owner_name, caller)
    return _view(ctx, recipe)


@router.delete("/{name}", status_code=204)
async def delete_load_balancer(
    ctx: Ctx, caller: Caller, name: str, owner_name: str | None = None
) -> Response:
    """Stop accepting; open connections drain before the listeners close."""
    async with ctx.transaction() as session:
        recipe = await recipe_service.get_recipe(
            session, LOAD_BALANCER, name, owner_name, caller, write=True
        )
        recipe_service.mark_deleted(session, recipe, caller.name, ctx.clock.now())
    ctx.wakers.load_balancers.set()
    return Response(status_code=204)
