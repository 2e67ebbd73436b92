"""Deployments: list them, read one (replicas with version, address and readiness,
the load balancer's backends and health, the endpoints), start, stop and restart
one, its pods' history and logs, delete one (its replicas stop, its load balancer
drains). Created and changed like any recipe, through `PUT /api/recipes`;
re-applying a changed spec rolls the replicas over.

A deployment's `{name}` is its name (`flo`) or its id (saturn-client's `sc start|
stop|restart|pods|logs|delete` send the id from the recipe's `state.id`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.api.base import errors
from flotilla.api.deployments import Deployment, DeploymentList
from flotilla.api.pods import PodHistory, PodLogs
from flotilla.recipes.types import DEPLOYMENT
from flotilla.server.changes import Change
from flotilla.server.db.models import DeploymentStateModel, RecipeModel
from flotilla.server.identity import Identity
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.runs.recipe_pods import pod_history, pod_logs
from flotilla.server.services.runs.runs import request_stop, stop_active_runs
from flotilla.server.services.serving.deployments import (
    active_replicas,
    deployment_view_state,
    front_door_path,
    is_stopped,
    set_stopped,
)
from flotilla.server.services.serving.load_balancers import load_balancer_state, plane_key

router = APIRouter(prefix="/api/deployments", tags=["deployments"])


async def _view(
    ctx: Ctx, session: AsyncSession, recipe: RecipeModel, base_url: str
) -> dict[str, Any]:
    state = await session.get(DeploymentStateModel, recipe.id)
    replicas = await active_replicas(session, recipe)
    lb = load_balancer_state(ctx.lb_plane, plane_key(recipe))
    stopped = await is_stopped(session, recipe.id)
    view = deployment_view_state(state, replicas, ctx.ready_replicas, lb, stopped)
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


async def _find(
    session: AsyncSession,
    caller: Identity,
    name: str,
    owner_name: str | None = None,
    *,
    write: bool = False,
) -> RecipeModel:
    """The deployment with this id, else with this name (of `owner_name`)."""
    by_id = await session.get(RecipeModel, name)
    if (
        by_id is not None
        and by_id.type == DEPLOYMENT
        and by_id.deleted_at is None
        and caller.can_read(by_id.owner, by_id.project)
    ):
        recipe_service.check_access(caller, by_id, write=write)
        return by_id
    return await recipe_service.get_recipe(
        session, DEPLOYMENT, name, owner_name, caller, write=write
    )


@router.get("", responses=errors())
async def list_deployments(ctx: Ctx, caller: Caller, request: Request) -> DeploymentList:
    base = str(request.base_url).rstrip("/")
    async with ctx.sessions() as session:
        recipes = await recipe_service.list_recipes(session, caller, DEPLOYMENT)
        views = [await _view(ctx, session, r, base) for r in recipes]
    return DeploymentList.model_validate({"deployments": views})


@router.get("/{name}", responses=errors(404))
async def get_deployment(
    ctx: Ctx, caller: Caller, request: Request, name: str, owner_name: str | None = None
) -> Deployment:
    async with ctx.sessions() as session:
        recipe = await _find(session, caller, name, owner_name)
        view = await _view(ctx, session, recipe, str(request.base_url).rstrip("/"))
    return Deployment.model_validate(view)


@router.post("/{name}/start", responses=errors(403, 404, 409))
async def start_deployment(
    ctx: Ctx, caller: Caller, request: Request, name: str, owner_name: str | None = None
) -> Deployment:
    """Run its replicas (until stopped). Starting a running deployment changes nothing."""
    async with ctx.transaction() as session:
        recipe = await _find(session, caller, name, owner_name, write=True)
        await set_stopped(session, recipe, False, caller.name, ctx.clock.now(), f"by {caller.name}")
    ctx.changes.announce(Change.DEPLOYMENTS)
    return await _answer(ctx, request, recipe.id)


@router.post("/{name}/stop", responses=errors(403, 404, 409))
async def stop_deployment(
    ctx: Ctx, caller: Caller, request: Request, name: str, owner_name: str | None = None
) -> Deployment:
    """Stop its replicas; it keeps none until started again."""
    async with ctx.transaction() as session:
        recipe = await _find(session, caller, name, owner_name, write=True)
        now = ctx.clock.now()
        await set_stopped(session, recipe, True, caller.name, now, f"by {caller.name}")
        await stop_active_runs(
            session, recipe.id, reason=f"stopped by {caller.name}", actor=caller.name, now=now
        )
    ctx.changes.announce(Change.DEPLOYMENTS, Change.STOPS_REQUESTED)
    return await _answer(ctx, request, recipe.id)


@router.post("/{name}/restart", responses=errors(403, 404, 409))
async def restart_deployment(
    ctx: Ctx, caller: Caller, request: Request, name: str, owner_name: str | None = None
) -> Deployment:
    """Replace every replica with a new one (and start it if it was stopped)."""
    async with ctx.transaction() as session:
        recipe = await _find(session, caller, name, owner_name, write=True)
        now = ctx.clock.now()
        await set_stopped(session, recipe, False, caller.name, now, f"restart by {caller.name}")
        for replica in await active_replicas(session, recipe):
            if not replica.stopping:
                request_stop(
                    session,
                    replica.run,
                    reason=f"restarted by {caller.name}",
                    actor=caller.name,
                    now=now,
                )
    ctx.changes.announce(Change.DEPLOYMENTS, Change.STOPS_REQUESTED)
    return await _answer(ctx, request, recipe.id)


async def _answer(ctx: Ctx, request: Request, recipe_id: str) -> Deployment:
    async with ctx.sessions() as session:
        recipe = await session.get(RecipeModel, recipe_id)
        assert recipe is not None  # found in the transaction just committed
        view = await _view(ctx, session, recipe, str(request.base_url).rstrip("/"))
    return Deployment.model_validate(view)


@router.get("/{name}/history", responses=errors(404))
async def history(ctx: Ctx, caller: Caller, name: str) -> PodHistory:
    """Every pod (replica task) of every replica run, newest first."""
    async with ctx.sessions() as session:
        recipe = await _find(session, caller, name)
        return PodHistory.model_validate(
            {"pods": await pod_history(session, recipe, ctx.clock.now())}
        )


@router.get("/{name}/logs", responses=errors(404))
async def logs(ctx: Ctx, caller: Caller, name: str, pod_name: str | None = None) -> PodLogs:
    async with ctx.sessions() as session:
        recipe = await _find(session, caller, name)
        return PodLogs.model_validate({"logs": await pod_logs(ctx, session, recipe, pod_name)})


@router.delete("/{name}", status_code=204, responses=errors(403, 404, 409))
async def delete_deployment(
    ctx: Ctx, caller: Caller, name: str, owner_name: str | None = None
) -> Response:
    async with ctx.transaction() as session:
        recipe = await _find(session, caller, name, owner_name, write=True)
        now = ctx.clock.now()
        await stop_active_runs(
            session, recipe.id, reason=f"{recipe.name} deleted", actor=caller.name, now=now
        )
        recipe_service.mark_deleted(session, recipe, caller.name, now)
    ctx.changes.announce(Change.DEPLOYMENTS, Change.STOPS_REQUESTED)
    return Response(status_code=204)
