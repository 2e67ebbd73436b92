"""Load balancers: list them with their listeners and backends (state, connections,
bytes, health history), read one, delete one (its connections drain). They are
created and changed like any recipe, through `PUT /api/recipes`.

`GET|PUT /api/load_balancers/policy` reads and replaces the network policy that
limits the backends and listen addresses of non-admins' load balancers
(`services/serving/lb_policy.py`); anyone signed in may read it, platform admins replace it."""

from __future__ import annotations

from fastapi import APIRouter, Response

from flotilla.api.base import errors
from flotilla.api.load_balancers import LoadBalancer, LoadBalancerList, LoadBalancerPolicy
from flotilla.recipes.types import LOAD_BALANCER
from flotilla.server.changes import Change
from flotilla.server.db.models import RecipeModel
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.serving import lb_policy
from flotilla.server.services.serving.load_balancers import (
    load_balancer_state,
    plane_key,
)

router = APIRouter(prefix="/api/load_balancers", tags=["load balancers"])


def _view(ctx: Ctx, recipe: RecipeModel) -> LoadBalancer:
    return LoadBalancer.model_validate(
        {
            "id": recipe.id,
            "name": recipe.name,
            "owner": recipe.owner,
            "project": recipe.project,
            "spec": recipe.spec,
            **load_balancer_state(ctx.lb_plane, plane_key(recipe)),
        }
    )


@router.get("", responses=errors())
async def list_load_balancers(ctx: Ctx, caller: Caller) -> LoadBalancerList:
    async with ctx.sessions() as session:
        recipes = await recipe_service.list_recipes(session, caller, LOAD_BALANCER)
    return LoadBalancerList(load_balancers=[_view(ctx, r) for r in recipes])


# Before `/{name}`, which would take `policy` for a load balancer's name (the name
# is reserved for it).
@router.get("/policy", responses=errors())
async def get_policy(ctx: Ctx, caller: Caller) -> LoadBalancerPolicy:
    async with ctx.sessions() as session:
        return await lb_policy.load_policy(session)


@router.put("/policy", responses=errors(403, 422))
async def put_policy(ctx: Ctx, caller: Caller, body: LoadBalancerPolicy) -> LoadBalancerPolicy:
    caller.require_admin()
    async with ctx.transaction() as session:
        await lb_policy.save_policy(session, body, caller.name, ctx.clock.now())
    ctx.changes.announce(Change.LOAD_BALANCERS)  # a tightened policy stops listeners it now refuses
    return body


@router.get("/{name}", responses=errors(404))
async def get_load_balancer(
    ctx: Ctx, caller: Caller, name: str, owner_name: str | None = None
) -> LoadBalancer:
    async with ctx.sessions() as session:
        recipe = await recipe_service.get_recipe(session, LOAD_BALANCER, name, owner_name, caller)
    return _view(ctx, recipe)


@router.delete("/{name}", status_code=204, responses=errors(403, 404))
async def delete_load_balancer(
    ctx: Ctx, caller: Caller, name: str, owner_name: str | None = None
) -> Response:
    """Stop accepting; open connections drain before the listeners close."""
    async with ctx.transaction() as session:
        recipe = await recipe_service.get_recipe(
            session, LOAD_BALANCER, name, owner_name, caller, write=True
        )
        recipe_service.mark_deleted(session, recipe, caller.name, ctx.clock.now())
    ctx.changes.announce(Change.LOAD_BALANCERS)
    return Response(status_code=204)
