"""Recipes: apply (idempotent PUT), create, read, list, versions.

A deployment created by saturn-client (its requests carry `X-Saturn-Client-Version`)
is created stopped, as Saturn does: `sc apply` without `--start` waits for `sc
start`. Flotilla's own clients get it running at once."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Response
from pydantic import TypeAdapter

from flotilla.api.base import errors
from flotilla.api.recipes import Recipe, RecipeList, RecipeVersionList
from flotilla.recipes import recipe_types
from flotilla.recipes.envelope import recipe_json_schema
from flotilla.server.kinds import KINDS, Applying, identity_kind, states
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.views import iso, recipe_view

router = APIRouter(prefix="/api/recipes", tags=["recipes"])
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


async def _apply(
    ctx: Ctx, caller: Caller, payload: Any, enforce_unknown: bool, saturn: str | None = None
) -> Response:
    """Apply in one transaction whose last step is encoding the answer: whatever
    fails, up to an answer that cannot be sent, rolls it all back, and nothing
    wakes before the commit."""
    if isinstance(payload, dict) and (identity := identity_kind(payload.get("type"))):
        async with ctx.transaction() as session:
            view = await identity.apply(session, caller, payload, ctx.clock.now(), enforce_unknown)
            answer = _answer(view)
        ctx.changes.announce(*identity.changes)
        return answer
    async with ctx.transaction() as session:
        recipe, changed = await recipe_service.apply_recipe(
            session, caller, payload, ctx.clock.now(), enforce_unknown=enforce_unknown
        )
        kind = KINDS[recipe.type]
        # Raises before the commit: a resource that cannot work is not stored.
        await kind.check(Applying(ctx, session, caller, recipe, changed, saturn))
        found = await states(ctx, session, [recipe])
        answer = _answer(recipe_view(recipe, found[recipe.id]))
    ctx.changes.announce(*kind.changes)
    return answer


def _answer(view: dict[str, Any]) -> Response:
    return Response(_ANSWER.dump_json(view), status_code=201, media_type="application/json")


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
        found = await states(ctx, session, recipes)
    items = [recipe_view(r, None if as_template else found[r.id]) for r in recipes]
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
    if identity := identity_kind(singular(recipe_type)):
        async with ctx.sessions() as session:
            view = await identity.read(session, caller, name)
        return Recipe.model_validate(view)
    async with ctx.sessions() as session:
        recipe = await recipe_service.get_recipe(
            session, singular(recipe_type), name, owner_name, caller
        )
        found = await states(ctx, session, [recipe])
    return Recipe.model_validate(recipe_view(recipe, None if as_template else found[recipe.id]))


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
