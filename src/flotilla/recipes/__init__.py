"""Recipe schemas: the Saturn-shaped envelope (`schema_version / type / spec / state`)
and one spec model per resource type. Pure: no I/O beyond parsing text."""

from flotilla.recipes.envelope import (
    _SPEC_MODELS,
    Recipe,
    parse_recipe,
    parse_recipe_text,
    recipe_types,
)
from flotilla.recipes.identity import IDENTITY_SPECS
from flotilla.recipes.job import JobSpec

# user, group, project: applied to the identity tables (see recipes/identity.py).
_SPEC_MODELS.update(IDENTITY_SPECS)

__all__ = ["JobSpec", "Recipe", "parse_recipe", "parse_recipe_text", "recipe_types"]
