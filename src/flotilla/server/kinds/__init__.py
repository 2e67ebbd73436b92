"""The resource kinds, by recipe type: one module each (`job.py`, `deployment.py`,
`fleet.py`, `load_balancer.py`, `identity.py`), registered here. Routes that take
any kind (`routers/recipes.py`) ask the kind rather than switching on `type`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.server.context import ServerContext
from flotilla.server.db.models import RecipeModel
from flotilla.server.kinds.base import Applying, Kind
from flotilla.server.kinds.deployment import DeploymentKind
from flotilla.server.kinds.fleet import FleetKind
from flotilla.server.kinds.identity import GroupKind, IdentityKind, ProjectKind, UserKind
from flotilla.server.kinds.job import JobKind
from flotilla.server.kinds.load_balancer import LoadBalancerKind
from flotilla.server.services.views import recipe_states

__all__ = ["KINDS", "Applying", "IdentityKind", "Kind", "identity_kind", "kind_named", "states"]

KINDS: dict[str, Kind] = {
    kind.type: kind
    for kind in (
        JobKind(),
        DeploymentKind(),
        FleetKind(),
        LoadBalancerKind(),
        UserKind(),
        GroupKind(),
        ProjectKind(),
    )
}


def kind_named(recipe_type: object) -> Kind | None:
    """The kind of a type as a request names it, or None for no such type (the
    recipe parser then names the field and the types there are)."""
    return KINDS.get(recipe_type) if isinstance(recipe_type, str) else None


def identity_kind(recipe_type: object) -> IdentityKind | None:
    """The kind of a user, group or project recipe; None for any other type."""
    kind = kind_named(recipe_type)
    return kind if isinstance(kind, IdentityKind) else None


async def states(
    ctx: ServerContext, session: AsyncSession, recipes: Sequence[RecipeModel]
) -> dict[str, dict[str, Any]]:
    """Each recipe's `state`: the runs part every kind has, then each kind's own
    (a fleet's size and reason, a load balancer's listeners and backends)."""
    found = await recipe_states(session, recipes)
    for kind in KINDS.values():
        mine = [r for r in recipes if r.type == kind.type]
        if mine:
            await kind.add_states(ctx, session, mine, found)
    return found
