"""Recipes (`/api/recipes`): the envelope every recipe is read back in (Saturn's
`schema_version`, `type`, `spec` and `state`), listings and versions. The spec is
free-form here: `recipes/envelope.py` owns its schema (the apply body documents it)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flotilla.api.base import ApiModel


class Recipe(ApiModel):
    """One recipe; `state` is absent `as_template` and varies by type (a job's runs,
    a fleet's size, a load balancer's listeners, an identity's id)."""

    schema_version: str
    type: str
    spec: dict[str, Any]
    state: dict[str, Any] | None = Field(default=None, description="absent as a template")


class RecipeList(ApiModel):
    recipes: list[Recipe]
    next_key: str | None  # Saturn's paging key; every recipe is on one page


class RecipeVersion(ApiModel):
    version: int
    created_at: str | None
    created_by: str
    spec: dict[str, Any]


class RecipeVersionList(ApiModel):
    versions: list[RecipeVersion]  # oldest first
