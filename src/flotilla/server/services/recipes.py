"""Applying, reading, listing and deleting recipes. Apply is idempotent: the same
spec twice is one version; a changed spec becomes the next version and the
previous ones are kept."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.cron import next_tick
from flotilla.errors import Conflict, NotFound
from flotilla.recipes import Recipe, parse_recipe
from flotilla.server.db.models import RecipeModel, RecipeVersionModel
from flotilla.server.identity import Identity
from flotilla.server.services.events import record_event


async def apply_recipe(
    session: AsyncSession,
    identity: Identity,
    data: Any,
    now: datetime,
    enforce_unknown: bool = True,
) -> tuple[RecipeModel, bool]:
    """Create or update a recipe. Returns (recipe, changed)."""
    recipe = parse_recipe(data, enforce_unknown)
    owner = getattr(recipe.spec, "owner", None) or identity.name
    spec = recipe.spec_dict()
    spec["owner"] = owner
    existing = await find_recipe(session, recipe.type, recipe.name, owner)
    if existing is None:
        return _create(session, recipe, spec, owner, identity, now), True
    if existing.spec == spec and existing.schema_version == recipe.schema_version:
        return existing, False
    _update_schedule(existing, existing.spec.get("schedule"), spec.get("schedule"), now)
    existing.spec = spec
    existing.schema_version = recipe.schema_version
    existing.version += 1
    existing.updated_at = now
    session.add(
        RecipeVersionModel(
            recipe_id=existing.id,
            version=existing.version,
            spec=spec,
            created_at=now,
            created_by=identity.name,
        )
    )
    record_event(
        session,
        kind="applied",
        message=f"version {existing.version} applied",
        actor=identity.name,
        now=now,
        recipe_id=existing.id,
    )
    return existing, True


def _create(
    session: AsyncSession,
    recipe: Recipe,
    spec: dict[str, Any],
    owner: str,
    identity: Identity,
    now: datetime,
) -> RecipeModel:
    model = RecipeModel(
        id=uuid.uuid4().hex,
        type=recipe.type,
        name=recipe.name,
        owner=owner,
        schema_version=recipe.schema_version,
        spec=spec,
        version=1,
        run_counter=0,
        schedule_enabled=False,
        next_tick_at=None,
        created_at=now,
        updated_at=now,
        deleted_at=None,
    )
    _update_schedule(model, None, spec.get("schedule"), now)
    session.add(model)
    session.add(
        RecipeVersionModel(
            recipe_id=model.id, version=1, spec=spec, created_at=now, created_by=identity.name
        )
    )
    record_event(
        session,
        kind="applied",
        message="version 1 applied",
        actor=identity.name,
        now=now,
        recipe_id=model.id,
    )
    return model


def _update_schedule(model: RecipeModel, old: str | None, new: str | None, now: datetime) -> None:
    """A new or changed schedule (re-)enables scheduling; an unchanged one keeps the
    enabled flag as `schedule`/`unschedule` left it."""
    if new == old:
        return
    set_schedule(model, new, now)


def set_schedule(model: RecipeModel, schedule: str | None, now: datetime) -> None:
    model.schedule_enabled = schedule is not None
    model.next_tick_at = next_tick(schedule, now) if schedule else None


async def find_recipe(
    session: AsyncSession, recipe_type: str, name: str, owner: str | None
) -> RecipeModel | None:
    query = select(RecipeModel).where(
        RecipeModel.type == recipe_type, RecipeModel.name == name, RecipeModel.deleted_at.is_(None)
    )
    if owner:
        query = query.where(RecipeModel.owner == owner)
    return (await session.execute(query.order_by(RecipeModel.created_at))).scalars().first()


async def get_recipe(
    session: AsyncSession, recipe_type: str, name: str, owner: str | None
) -> RecipeModel:
    found = await find_recipe(session, recipe_type, name, owner)
    if found is None:
        raise NotFound(f"{recipe_type} {name!r}" + (f" of owner {owner!r}" if owner else ""))
    return found


async def get_recipe_by_id(session: AsyncSession, recipe_type: str, recipe_id: str) -> RecipeModel:
    found = await session.get(RecipeModel, recipe_id)
    if found is None or found.deleted_at is not None:
        raise NotFound(f"{recipe_type} {recipe_id}")
    if found.type != recipe_type:
        # e.g. /api/jobs/{id}/start with a fleet's id: say what it is instead.
        raise Conflict(
            f"{recipe_id} is the {found.type} {found.name}, not a {recipe_type}; "
            f"only a {recipe_type} has this action"
        )
    return found


async def list_recipes(
    session: AsyncSession,
    recipe_type: str | None = None,
    owner: str | None = None,
    name_prefix: str | None = None,
) -> Sequence[RecipeModel]:
    query = select(RecipeModel).where(RecipeModel.deleted_at.is_(None))
    if recipe_type:
        query = query.where(RecipeModel.type == recipe_type)
    if owner:
        query = query.where(RecipeModel.owner == owner)
    if name_prefix:
        query = query.where(func.substr(RecipeModel.name, 1, len(name_prefix)) == name_prefix)
    return (await session.execute(query.order_by(RecipeModel.name))).scalars().all()


async def recipe_versions(session: AsyncSession, recipe_id: str) -> Sequence[RecipeVersionModel]:
    query = (
        select(RecipeVersionModel)
        .where(RecipeVersionModel.recipe_id == recipe_id)
        .order_by(RecipeVersionModel.version)
    )
    return (await session.execute(query)).scalars().all()


def mark_deleted(session: AsyncSession, recipe: RecipeModel, actor: str, now: datetime) -> None:
    """Soft delete: the name is free again, runs and logs stay for the record."""
    recipe.deleted_at = now
    recipe.schedule_enabled = False
    record_event(
        session,
        kind="deleted",
        message=f"{recipe.type} {recipe.name} deleted",
        actor=actor,
        now=now,
        recipe_id=recipe.id,
    )
