"""Applying, reading, listing and deleting recipes. Apply is idempotent: the same
spec twice is one version; a changed spec becomes the next version and the
previous ones are kept. Apply only adds to the caller's session: the routes run it
in one transaction with their other checks, so a refused apply stores nothing."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVarTuple

from sqlalchemy import Select, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.cron import check_interval, next_tick, validate_schedule
from flotilla.errors import Conflict, FieldProblem, Forbidden, InvalidRecipe, NotFound
from flotilla.recipes import Recipe, parse_recipe
from flotilla.server.db.models import ProjectModel, RecipeModel, RecipeVersionModel
from flotilla.server.identity import Identity
from flotilla.server.services.events import record_event
from flotilla.server.services.identity.secrets import check_attachments

# The columns a query selects, kept through `visible_to`.
Columns = TypeVarTuple("Columns")
# The project a recipe is in when it names none: its owner's own work.
DEFAULT_PROJECT = "default"
MAX_OWNER_LENGTH = 128  # the column that stores it


async def apply_recipe(
    session: AsyncSession,
    identity: Identity,
    data: Any,
    now: datetime,
    enforce_unknown: bool = True,
) -> tuple[RecipeModel, bool]:
    """Create or update a recipe. Returns (recipe, changed).

    The caller must be allowed to own it (themselves or one of their groups) and to
    create work in its project; updating needs write access to the existing one."""
    recipe = parse_recipe(data, enforce_unknown)
    owner = getattr(recipe.spec, "owner", None) or identity.name
    if len(owner) > MAX_OWNER_LENGTH:
        raise InvalidRecipe([FieldProblem("spec.owner", f"at most {MAX_OWNER_LENGTH} characters")])
    spec = recipe.spec_dict()
    spec["owner"] = owner
    project = await resolve_project(session, spec.get("project"))
    what = f"{recipe.type} {recipe.name!r}"
    if not identity.is_admin and not identity.owns(owner):
        raise Forbidden(f"{identity.name} may not create a {recipe.type} owned by {owner!r}")
    existing = await find_recipe(session, recipe.type, recipe.name, owner)
    if existing is not None:
        identity.require_write(existing.owner, existing.project, what)
    if not identity.can_write(owner, project):
        raise Forbidden(identity.write_refusal(owner, project, what))
    refs = getattr(recipe.spec, "secrets", None)
    if refs:
        await check_attachments(session, identity, refs, owner, project)
    if existing is None:
        model = _create(session, recipe, spec, owner, identity, now)
        model.project = project
        return model, True
    if existing.spec == spec and existing.schema_version == recipe.schema_version:
        return existing, False
    existing.project = project
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


async def resolve_project(session: AsyncSession, name: object) -> str | None:
    """The project a recipe's `project` field names. `default` (the field's default)
    means "no project" unless a project of that name was created."""
    if name is None:
        return None
    found = (
        await session.execute(select(ProjectModel.name).where(ProjectModel.name == str(name)))
    ).scalar()
    if found is not None:
        return found
    if name == DEFAULT_PROJECT:
        return None
    raise InvalidRecipe([FieldProblem("spec.project", f"no project named {name!r}")])


def check_access(identity: Identity, recipe: RecipeModel, *, write: bool = False) -> None:
    """404 for a recipe the caller may not see (as if it did not exist), 403 for one
    they may see but not change."""
    what = f"{recipe.type} {recipe.name!r}"
    if write:
        identity.require_write(recipe.owner, recipe.project, what)
    else:
        identity.require_read(recipe.owner, recipe.project, what)


def visible_to(query: Select[*Columns], identity: Identity) -> Select[*Columns]:
    """Restrict a query over recipes to those the caller may read."""
    if identity.is_admin:
        return query
    return query.where(
        or_(
            RecipeModel.owner.in_(identity.visible_owners()),
            RecipeModel.project.in_(identity.visible_projects()),
        )
    )


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


def enabled_schedule(recipe: RecipeModel) -> str | None:
    schedule = recipe.spec.get("schedule") if recipe.schedule_enabled else None
    return str(schedule) if schedule else None


def check_schedule(schedule: str | None, minimum: float) -> None:
    """Refuse a schedule this server does not run: one that fires more often than its
    minimum interval (`Settings.min_schedule_interval`), or one stored before the
    rules tightened that is no schedule now. Every route that writes a schedule or
    enables one (apply, PATCH /api/jobs/{id}, POST .../schedule) calls it before its
    commit; the recipe parser cannot, as the minimum is the server's."""
    if schedule is None:
        return
    try:
        validate_schedule(schedule)
        check_interval(schedule, minimum)
    except ValueError as e:
        raise InvalidRecipe([FieldProblem("spec.schedule", str(e))]) from e


async def find_recipe(
    session: AsyncSession,
    recipe_type: str,
    name: str,
    owner: str | None,
    identity: Identity | None = None,
) -> RecipeModel | None:
    """The live recipe of that type and name (and owner); with `identity`, only among
    those the caller may read, so a name clash with someone else's is invisible."""
    query = select(RecipeModel).where(
        RecipeModel.type == recipe_type, RecipeModel.name == name, RecipeModel.deleted_at.is_(None)
    )
    if owner:
        query = query.where(RecipeModel.owner == owner)
    if identity is not None:
        query = visible_to(query, identity)
    return (await session.execute(query.order_by(RecipeModel.created_at))).scalars().first()


async def get_recipe(
    session: AsyncSession,
    recipe_type: str,
    name: str,
    owner: str | None,
    identity: Identity,
    *,
    write: bool = False,
) -> RecipeModel:
    found = await find_recipe(session, recipe_type, name, owner, identity)
    if found is None:
        raise NotFound(f"{recipe_type} {name!r}" + (f" of owner {owner!r}" if owner else ""))
    check_access(identity, found, write=write)
    return found


async def get_recipe_by_id(
    session: AsyncSession,
    recipe_type: str,
    recipe_id: str,
    identity: Identity,
    *,
    write: bool = False,
) -> RecipeModel:
    found = await session.get(RecipeModel, recipe_id)
    if (
        found is None
        or found.deleted_at is not None
        or not identity.can_read(found.owner, found.project)
    ):
        raise NotFound(f"{recipe_type} {recipe_id}")
    check_access(identity, found, write=write)
    if found.type != recipe_type:
        # e.g. /api/jobs/{id}/start with a fleet's id: say what it is instead.
        raise Conflict(
            f"{recipe_id} is the {found.type} {found.name}, not a {recipe_type}; "
            f"only a {recipe_type} has this action"
        )
    return found


async def list_recipes(
    session: AsyncSession,
    identity: Identity,
    recipe_type: str | None = None,
    owner: str | None = None,
    name_prefix: str | None = None,
) -> Sequence[RecipeModel]:
    query = visible_to(select(RecipeModel).where(RecipeModel.deleted_at.is_(None)), identity)
    if recipe_type:
        query = query.where(RecipeModel.type == recipe_type)
    if owner:
        query = query.where(RecipeModel.owner == owner)
    if name_prefix:
        query = query.where(func.substr(RecipeModel.name, 1, len(name_prefix)) == name_prefix)
    return (await session.execute(query.order_by(RecipeModel.name))).scalars().all()


async def live_recipes(session: AsyncSession, recipe_type: str) -> Sequence[RecipeModel]:
    """Every recipe of a type that is not deleted, for the reconcilers."""
    query = select(RecipeModel).where(
        RecipeModel.type == recipe_type, RecipeModel.deleted_at.is_(None)
    )
    return (await session.execute(query)).scalars().all()


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
