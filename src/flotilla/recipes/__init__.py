"""Recipe schemas: the Saturn-shaped envelope (`schema_version / type / spec / state`)
and one spec model per resource type. Pure: no I/O beyond parsing text."""

from flotilla.recipes.envelope import (
    Recipe,
    parse_recipe,
    parse_recipe_text,
    recipe_types,
)
from flotilla.recipes.job import JobSpec

__all__ = ["JobSpec", "Recipe", "parse_recipe", "parse_recipe_text", "recipe_types"]
