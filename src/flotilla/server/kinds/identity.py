"""Users, groups and projects as recipes: applied by platform admins to the
identity tables (`services/identity/`), never stored as recipe rows, so they keep
no version history (`version` is always 1). A project's quotas bound what the
queue may run, so applying any of them is announced as a policy change."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.recipes.envelope import dump_recipe, parse_recipe
from flotilla.recipes.identity import GroupSpec, ProjectSpec, UserSpec
from flotilla.recipes.types import GROUP, PROJECT, USER
from flotilla.server.changes import Change
from flotilla.server.identity import Identity
from flotilla.server.kinds.base import Kind
from flotilla.server.services.identity import groups, projects, users


class IdentityKind(Kind):
    changes = (Change.QUEUE_POLICY,)

    async def apply(
        self,
        session: AsyncSession,
        caller: Identity,
        data: Any,
        now: datetime,
        enforce_unknown: bool,
    ) -> dict[str, Any]:
        """Apply the recipe `data`; idempotent. A group's or project's members
        become exactly the listed ones."""
        caller.require_admin()
        recipe = parse_recipe(data, enforce_unknown)
        model_id, changed, spec = await self._apply(session, recipe.spec, caller.name, now)
        state = {"id": model_id, "status": "applied", "changed": changed, "version": 1}
        return dump_recipe(recipe.type, spec, state, recipe.schema_version)

    async def read(self, session: AsyncSession, caller: Identity, name: str) -> dict[str, Any]:
        """The resource as a recipe (`flo get -t user NAME`, `flo export`)."""
        model_id, spec = await self._read(session, caller, name)
        return dump_recipe(self.type, spec, {"id": model_id, "status": "applied", "version": 1})

    async def _apply(
        self, session: AsyncSession, spec: BaseModel, actor: str, now: datetime
    ) -> tuple[str, bool, dict[str, Any]]:
        raise NotImplementedError

    async def _read(
        self, session: AsyncSession, caller: Identity, name: str
    ) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError


class UserKind(IdentityKind):
    type = USER

    async def _apply(
        self, session: AsyncSession, spec: BaseModel, actor: str, now: datetime
    ) -> tuple[str, bool, dict[str, Any]]:
        assert isinstance(spec, UserSpec)
        user, changed = await users.apply_user_spec(session, spec, actor, now)
        return user.id, changed, users.user_spec(user)

    async def _read(
        self, session: AsyncSession, caller: Identity, name: str
    ) -> tuple[str, dict[str, Any]]:
        user = await users.readable_user(session, caller, name)
        users.require_self_or_admin(caller, user, "read their recipe")
        return user.id, users.user_spec(user)


class GroupKind(IdentityKind):
    type = GROUP

    async def _apply(
        self, session: AsyncSession, spec: BaseModel, actor: str, now: datetime
    ) -> tuple[str, bool, dict[str, Any]]:
        assert isinstance(spec, GroupSpec)
        group, changed = await groups.apply_group_spec(session, spec, actor, now)
        return group.id, changed, await groups.group_spec(session, group)

    async def _read(
        self, session: AsyncSession, caller: Identity, name: str
    ) -> tuple[str, dict[str, Any]]:
        group = await groups.readable_group(session, caller, name)
        return group.id, await groups.group_spec(session, group)


class ProjectKind(IdentityKind):
    type = PROJECT

    async def _apply(
        self, session: AsyncSession, spec: BaseModel, actor: str, now: datetime
    ) -> tuple[str, bool, dict[str, Any]]:
        assert isinstance(spec, ProjectSpec)
        project, changed = await projects.apply_project_spec(session, spec, actor, now)
        return project.id, changed, await projects.project_spec(session, project)

    async def _read(
        self, session: AsyncSession, caller: Identity, name: str
    ) -> tuple[str, dict[str, Any]]:
        project = await projects.readable_project(session, caller, name)
        return project.id, await projects.project_spec(session, project)
