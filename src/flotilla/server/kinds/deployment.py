"""Deployments: their routes' ports must be free; one that saturn-client creates
starts stopped, as on Saturn (`sc apply` without `--start` waits for `sc start`)."""

from __future__ import annotations

from flotilla.recipes.types import DEPLOYMENT
from flotilla.server.changes import Change
from flotilla.server.kinds.base import Applying, Kind
from flotilla.server.services.serving.deployments import set_stopped
from flotilla.server.services.serving.load_balancers import check_ports


class DeploymentKind(Kind):
    type = DEPLOYMENT
    changes = (Change.DEPLOYMENTS,)

    async def check(self, applying: Applying) -> None:
        if not applying.changed:
            return
        recipe = applying.recipe
        ports = [int(r["port"]) for r in recipe.spec.get("routes", []) if r.get("port")]
        if ports:
            await check_ports(applying.session, applying.ctx.settings, recipe, ports)
        if applying.saturn_client and recipe.version == 1:
            why = f"created by saturn-client {applying.saturn_client}; `sc start` runs it"
            now = applying.ctx.clock.now()
            await set_stopped(applying.session, recipe, True, applying.caller.name, now, why)
