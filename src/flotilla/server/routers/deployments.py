"""Deployments: list them, read one (replicas with version, address and readiness,
the load balancer's backends and health, the endpoints), delete one (its replicas
stop, its load balancer drains). Created and changed like any recipe, through
`PUT /api/recipes`; re-applying a changed spec rolls the replicas over."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.server.db.models import DeploymentStateModel, RecipeModel
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.deployments import (
    DEPLOYMENT,
    active_replicas,
    deployment_view_state,
    front_door_path,
)
from flotilla.server.services.load_balancers import load_balancer_state, plane_key
from flotilla.server.services.runs import stop_active_runs

router = APIRouter(prefix="/api/deployments", tags=["deployments"])


async def _view(
    ctx: Ctx, session: AsyncSession, recipe: RecipeModel, base_url: str
) -> dict[str, Any]:
    state = await session.get(DeploymentStateModel, recipe.id)
    replicas = await active_replicas(session, recipe)
    lb = load_balancer_state(ctx.lb_plane, plane_key(recipe))
    view = deployment_view_state(state, replicas, ctx.ready_replicas, lb)
    ports = state.route_ports if state else {}
    view["endpoints"] = {
        "http": base_url + front_door_path(recipe.owner, recipe.name),
        "tcp": {cp: f"{ctx.settings.host}:{port}" for cp, port in ports.items()},
    }
    return {
        "id": recipe.id,
        "name": recipe.name,
        "owner": recipe.owner,
        "project": recipe.project,
        "version": recipe.version,
        "spec": recipe.spec,
        **view,
    }


@router.get("")
async def list_deployments(ctx: Ctx, caller: Caller, request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")
    async with ctx.sessions() as session:
        recipes = await recipe_service.list_recipes(session, caller, DEPLOYMENT)
        return {"deployments": [await _view(ctx, session, r, base) for r in recipes]}


@router.get("/{name}")
async def get_deployment(
    ctx: Ctx, caller: Caller, request: Request, name: str, owner_name: str | None = None
) -> dict[str, Any]:
    async with ctx.sessions() as session:
        recipe = await recipe_service.get_recipe(session, DEPLOYMENT, name, owner_name, caller)
        return await _view(ctx, session, recipe, str(request.base_url).rstrip("/"))


@router.delete("/{name}", status_code=204)
async def delete_deployment(
    ctx: Ctx, caller: Caller, name: str, owner_name: str | None = None
) -> Response:
    async with ctx.transaction() as session:
        recipe = await recipe_service.get_recipe(
            session, DEPLOYMENT, name, owner_name, caller, write=True
        )
        now = ctx.clock.now()
        await stop_active_runs(
            session, recipe.id, reason=f"{recipe.name} deleted", actor=caller.name, now=now
        )
        recipe_service.mark_deleted(session, recipe, caller.name, now)
    ctx.wakers.deployments.set()
    ctx.wakers.supervision.set()
    return Response(status_code=204)
