"""Load balancers: their listeners' ports must be free and within the network
policy; their state is what the data plane reports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.recipes.types import LOAD_BALANCER
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import RecipeModel
from flotilla.server.kinds.base import Applying, Kind
from flotilla.server.services.serving.load_balancers import (
    check_ports,
    load_balancer_state,
    plane_key,
)


class LoadBalancerKind(Kind):
    type = LOAD_BALANCER
    changes = (Change.LOAD_BALANCERS,)

    async def check(self, applying: Applying) -> None:
        if not applying.changed:
            return
        recipe = applying.recipe
        ports = [int(listener["port"]) for listener in recipe.spec.get("listeners", [])]
        await check_ports(applying.session, applying.ctx.settings, recipe, ports)

    async def add_states(
        self,
        ctx: ServerContext,
        session: AsyncSession,
        recipes: Sequence[RecipeModel],
        states: dict[str, dict[str, Any]],
    ) -> None:
        for recipe in recipes:
            states[recipe.id].update(load_balancer_state(ctx.lb_plane, plane_key(recipe)))
