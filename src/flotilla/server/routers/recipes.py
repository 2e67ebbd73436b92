"""Recipes: apply (idempotent PUT), create, read, list, versions.

A deployment created by saturn-client (its requests carry `X-Saturn-Client-Version`)
is created stopped, as Saturn does: `sc apply` without `--start` waits for `sc
start`. Flotilla's own clients get it running at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response
from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.api.base import errors
from flotilla.api.recipes import Recipe, RecipeList, RecipeVersionList
from flotilla.recipes import recipe_types
from flotilla.recipes.envelope import recipe_json_schema
from flotilla.recipes.fleet import SSH
from flotilla.server.db.models import RecipeModel
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.deployments import DEPLOYMENT, set_stopped
from flotilla.server.services.fleet_checks import check_fleet
from flotilla.server.services.fleet_views import fleet_recipe_states
from flotilla.server.services.fleets import FLEET
from flotilla.server.services.load_balancers import (
    LOAD_BALANCER,
    check_ports,
    load_balancer_state,
    plane_key,
)
from flotilla.server.services.views import iso, recipe_states, recipe_view

router = APIRouter(prefix="/api/recipes", tags=["recipes"])
JOB = "job"
# saturn-client sends its version with every request.
SaturnClient = Annotated[str | None, Header(alias="X-Saturn-Client-Version")]
# What FastAPI would have encoded the answer with, used before the commit instead.
_ANSWER = TypeAdapter(dict[str, Any])

# The body is validated by `recipes.parse_recipe` (for its field-path errors and
# "did you mean" hints); this documents its shape in the OpenAPI schema.
_RECIPE_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": recipe_json_schema()}},
    }
}


def singular(recipe_type: str) -> str:
    """Saturn's clients say `job` or `jobs`."""
    return (
        recipe_type[:-1]
        if recipe_type.endswith("s") and recipe_type[:-1] in recipe_types()
        else recipe_type
    )


async def _states(
    ctx: Ctx, session: AsyncSession, recipes: Sequence[RecipeModel]
) -> dict[str, dict[str, Any]]:
    """Each recipe's `state`: a job's runs, a fleet's size and reason, a load
    balancer's listeners and backends."""
    states = await recipe_states(session, recipes)
    fleets = {r.id for r in recipes if r.type == FLEET}
    states.update(await fleet_recipe_states(session, ctx.providers, fleets))
    for recipe in recipes:
        if recipe.type == LOAD_BALANCER:
            states[recipe.id].update(load_balancer_state(ctx.lb_plane, plane_key(recipe)))
    return states


async def _apply(
    ctx: Ctx, caller: Caller, payload: Any, enforce_unknown: bool, saturn: str | None = None
) -> Response:
    """Apply in one transaction whose last step is encoding the answer: whatever
    fails, up to an answer that cannot be sent, rolls it all back, and nothing
    wakes before the commit."""
    if recipe_service.is_identity_recipe(payload):
        async with ctx.transaction() as session:
            view = await recipe_service.apply_identity_recipe(
                session, caller, payload, ctx.clock.now(), enforce_unknown
            )
            return _answer(view)
    async with ctx.transaction() as session:
        recipe, changed = await recipe_service.apply_recipe(
            session, caller, payload, ctx.clock.now(), enforce_unknown=enforce_unknown
        )
        # These raise before the commit: a resource that cannot work is not stored.
        if recipe.type == FLEET and recipe.spec.get("provider") == SSH:
            # Its hosts join everyone's pool and the applier is root on them: adding
            # machines to the platform is an admin's act (deleting one too).
            caller.require_admin()
        if recipe.type == FLEET and changed:
            await check_fleet(session, ctx.providers, recipe)
        if changed and (ports := declared_ports(recipe)):
            await check_ports(session, ctx.settings, recipe, ports)
        if changed and recipe.type == JOB:
            schedule = recipe_service.enabled_schedule(recipe)
            recipe_service.check_schedule(schedule, ctx.settings.min_schedule_interval)
        if saturn and changed and recipe.type == DEPLOYMENT and recipe.version == 1:
            why = f"created by saturn-client {saturn}; `sc start` runs it"
            await set_stopped(session, recipe, True, caller.name, ctx.clock.now(), why)
        states = await _states(ctx, session, [recipe])
        answer = _answer(recipe_view(recipe, states[recipe.id]))
    wakers = ctx.wakers
    {
        FLEET: wakers.fleets,
        LOAD_BALANCER: wakers.load_balancers,
        DEPLOYMENT: wakers.deployments,
    }.get(recipe.type, wakers.cron).set()
    return answer


def _answer(view: dict[str, Any]) -> Response:
    return Response(_ANSWER.dump_json(view), status_code=201, media_type="application/json")


def declared_ports(recipe: RecipeModel) -> list[int]:
    """The TCP ports a load balancer or a deployment asks to listen on."""
    if recipe.type == LOAD_BALANCER:
        return [int(listener["port"]) for listener in recipe.spec.get("listeners", [])]
    if recipe.type == DEPLOYMENT:
        return [int(r["port"]) for r in recipe.spec.get("routes", []) if r.get("port")]
    return []


@router.put(
    "",
    status_code=201,
    response_model=Recipe,
    responses=errors(403, 404, 409, 422),
    openapi_extra=_RECIPE_BODY,
)
async def apply_recipe(
    ctx: Ctx,
    caller: Caller,
    payload: Any = Body(...),  # noqa: B008
    enforce_unknown: bool = True,
    saturn_client: SaturnClient = None,
) -> Response:
    """Create or update a recipe from its envelope. The same recipe twice is a no-op."""
    return await _apply(ctx, caller, payload, enforce_unknown, saturn_client)


@router.post(
    "",
    status_code=201,
    response_model=Recipe,
    responses=errors(403, 404, 409, 422),
    openapi_extra=_RECIPE_BODY,
)
async def create_recipe(
    ctx: Ctx,
    caller: Caller,
    payload: Any = Body(...),  # noqa: B008
    enforce_unknown: bool = True,
    saturn_client: SaturnClient = None,
) -> Response:
    return await _apply(ctx, caller, payload, enforce_unknown, saturn_client)


@router.get("", responses=errors(), response_model_exclude_unset=True)
async def list_recipes(
    ctx: Ctx,
    caller: Caller,
    type: str | None = None,
    owner_name: str | None = None,
    name: str | None = None,
    as_template: bool = False,
) -> RecipeList:
    async with ctx.sessions() as session:
        recipes = await recipe_service.list_recipes(
            session, caller, singular(type) if type else None, owner_name, name
        )
        states = await _states(ctx, session, recipes)
    items = [recipe_view(r, None if as_template else states[r.id]) for r in recipes]
    return RecipeList.model_validate({"recipes": items, "next_key": None})


@router.get("/{recipe_type}/{name}", responses=errors(403, 404), response_model_exclude_unset=True)
async def get_recipe(
    ctx: Ctx,
    caller: Caller,
    recipe_type: str,
    name: str,
    owner_name: str | None = None,
    as_template: bool = False,
) -> Recipe:
    if singular(recipe_type) in recipe_service.IDENTITY_RECIPE_TYPES:
        async with ctx.sessions() as session:
            view = await recipe_service.identity_recipe(
                session, caller, singular(recipe_type), name
            )
        return Recipe.model_validate(view)
    async with ctx.sessions() as session:
        recipe = await recipe_service.get_recipe(
            session, singular(recipe_type), name, owner_name, caller
        )
        states = await _states(ctx, session, [recipe])
    return Recipe.model_validate(recipe_view(recipe, None if as_template else states[recipe.id]))


@router.get("/{recipe_type}/{name}/versions", responses=errors(404))
async def recipe_versions(
    ctx: Ctx, caller: Caller, recipe_type: str, name: str, owner_name: str | None = None
) -> RecipeVersionList:
    async with ctx.sessions() as session:
        recipe = await recipe_service.get_recipe(
            session, singular(recipe_type), name, owner_name, caller
        )
        versions = await recipe_service.recipe_versions(session, recipe.id)
    return RecipeVersionList.model_validate(
        {
            "versions": [
                {
                    "version": v.version,
                    "created_at": iso(v.created_at),
                    "created_by": v.created_by,
                    "spec": v.spec,
                }
                for v in versions
            ]
        }
    )
