"""Fleets: the provider, instance type, region and placement must be ones this
server can honour; an SSH fleet is an admin's to apply (its hosts join everyone's
pool and the applier is root on them). Their state is size and reason, not runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.recipes.fleet import SSH
from flotilla.recipes.types import FLEET
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import RecipeModel
from flotilla.server.kinds.base import Applying, Kind
from flotilla.server.services.fleets.fleet_checks import check_fleet
from flotilla.server.services.fleets.fleet_views import fleet_recipe_states


class FleetKind(Kind):
    type = FLEET
    changes = (Change.FLEETS,)

    async def check(self, applying: Applying) -> None:
        recipe = applying.recipe
        if recipe.spec.get("provider") == SSH:
            applying.caller.require_admin()
        if applying.changed:
            await check_fleet(applying.session, applying.ctx.providers, recipe)

    async def add_states(
        self,
        ctx: ServerContext,
        session: AsyncSession,
        recipes: Sequence[RecipeModel],
        states: dict[str, dict[str, Any]],
    ) -> None:
        states.update(await fleet_recipe_states(session, ctx.providers, {r.id for r in recipes}))
