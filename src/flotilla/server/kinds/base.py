"""What a resource kind is to the server: the apply-time checks beyond its schema,
its part of a recipe's `state`, and what applying one changes.

The spec itself is the recipe model's (`flotilla.recipes`); the work on stored
recipes is the services' (`server/services/`). A kind ties the two together for
the routes that handle every kind alike (`routers/recipes.py`). Adding a kind is
one module here, registered in `__init__.py`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import RecipeModel
from flotilla.server.identity import Identity


@dataclass(frozen=True)
class Applying:
    """One recipe being applied, inside the apply's transaction: `recipe` is the
    stored row, `changed` whether this apply made a new version."""

    ctx: ServerContext
    session: AsyncSession
    caller: Identity
    recipe: RecipeModel
    changed: bool
    # The saturn-client version when the request came from `sc`, else None.
    saturn_client: str | None = None


class Kind:
    type: ClassVar[str]
    # What applying one changes, announced after the commit for the loops that
    # watch it (`server/changes.py`).
    changes: ClassVar[tuple[Change, ...]] = ()

    async def check(self, applying: Applying) -> None:
        """Refuse a recipe that cannot work by raising a `ClientError` before the
        commit: nothing of it is stored. May also set up what a new version needs
        (in the same transaction)."""

    async def add_states(
        self,
        ctx: ServerContext,
        session: AsyncSession,
        recipes: Sequence[RecipeModel],
        states: dict[str, dict[str, Any]],
    ) -> None:
        """Add this kind's part to each recipe's `state` (`states[recipe.id]`,
        which already holds the runs part every kind has)."""
