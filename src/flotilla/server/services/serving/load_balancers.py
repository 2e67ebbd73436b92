"""Load balancer resources (`type: load_balancer` recipes): the configs the data
plane should run, the port checks made when one is applied, and their views
(listeners, backends with state, connections, bytes and health history).

Deployments' own load balancers run in the same data plane under keys of their
own (see `services/serving/deployments.py`); ports are checked across both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.config import Settings
from flotilla.errors import Conflict
from flotilla.lb import LoadBalancerConfig
from flotilla.recipes.load_balancer import LoadBalancerSpec
from flotilla.recipes.types import LOAD_BALANCER
from flotilla.server.db.models import DeploymentStateModel, RecipeModel
from flotilla.server.lbplane import LoadBalancerPlane
from flotilla.server.services.recipes import live_recipes
from flotilla.server.services.serving import lb_policy


def plane_key(recipe: RecipeModel) -> str:
    """The data plane's key for a recipe's load balancer (its own, or a deployment's)."""
    return f"{recipe.type}:{recipe.id}"


def config_of(recipe: RecipeModel, settings: Settings) -> LoadBalancerConfig:
    spec = LoadBalancerSpec.model_validate(recipe.spec)
    return spec.to_config(settings.host)


async def live_load_balancers(session: AsyncSession) -> Sequence[RecipeModel]:
    return await live_recipes(session, LOAD_BALANCER)


async def ports_in_use(
    session: AsyncSession, settings: Settings, other_than: str
) -> dict[int, str]:
    """Listener ports taken, by port: the API's own, the SSH gateway's, every other
    load balancer's, every deployment's."""
    taken = {settings.port: "the Flotilla API"}
    if settings.ssh_port:
        taken[settings.ssh_port] = "the SSH gateway"
    for recipe in await live_load_balancers(session):
        if recipe.id != other_than:
            for port in _ports(listener.get("port") for listener in _listeners(recipe.spec)):
                taken[port] = f"load balancer {recipe.name}"
    rows = await session.execute(
        select(RecipeModel.name, DeploymentStateModel.route_ports)
        .join(DeploymentStateModel, DeploymentStateModel.recipe_id == RecipeModel.id)
        .where(RecipeModel.deleted_at.is_(None), RecipeModel.id != other_than)
    )
    for name, route_ports in rows:
        for port in _ports((route_ports or {}).values()):
            taken[port] = f"deployment {name}"
    return taken


def _listeners(spec: Any) -> list[dict[str, Any]]:
    listeners = spec.get("listeners") if isinstance(spec, dict) else None
    return [ls for ls in listeners if isinstance(ls, dict)] if isinstance(listeners, list) else []


def _ports(values: Iterable[object]) -> list[int]:
    """The ports among stored values; a corrupt row (`"port": "x"`) is no one's
    port and must not fail everyone's apply."""
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


async def check_ports(
    session: AsyncSession, settings: Settings, recipe: RecipeModel, ports: Sequence[int]
) -> None:
    """At apply: a port another resource listens on is a conflict, named; a load
    balancer must also keep to the network policy (`services/serving/lb_policy.py`)."""
    taken = await ports_in_use(session, settings, recipe.id)
    for port in ports:
        if port in taken:
            raise Conflict(f"port {port} is already used by {taken[port]}")
    if recipe.type == LOAD_BALANCER:
        await check_policy(session, settings, recipe)


async def check_policy(session: AsyncSession, settings: Settings, recipe: RecipeModel) -> None:
    """Refuse (403, naming each field) a non-admin's load balancer whose backends or
    listen addresses the policy does not allow."""
    if await lb_policy.exempt_recipes(session, [recipe]):
        return
    problems = lb_policy.listener_problems(
        recipe.spec,
        await lb_policy.load_policy(session),
        settings.host,
        await ports_in_use(session, settings, other_than=""),
    )
    if problems:
        raise lb_policy.PolicyRefused([p for found in problems.values() for p in found])


def load_balancer_state(plane: LoadBalancerPlane, key: str) -> dict[str, Any]:
    """What the data plane reports for one load balancer."""
    snapshot = plane.snapshot(key)
    error = plane.errors.get(key)
    status = "error" if error else ("serving" if snapshot else "starting")
    return {
        "status": status,
        "error": error,
        "listeners": snapshot["listeners"] if snapshot else [],
    }
