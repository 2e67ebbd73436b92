"""Projects and their members: users or groups holding a role (admin, member,
viewer; see `server/identity.py` for what each may do). Platform admins create,
update and delete projects; a project's own admins manage its members. Called by
`routers/projects.py` and, for `type: project` recipes, `services/recipes.py`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import Conflict, Forbidden, NotFound
from flotilla.recipes.identity import ProjectMemberSpec, ProjectSpec, check_name, invalid
from flotilla.server.db.models import (
    GroupModel,
    ProjectMemberModel,
    ProjectModel,
    RecipeModel,
    UserModel,
)
from flotilla.server.identity import Identity, Role
from flotilla.server.services.events import record_event
from flotilla.server.services.identity.groups import find_group_by_name
from flotilla.server.services.identity.owners import forget_owner
from flotilla.server.services.identity.users import (
    find_user_by_name,
    flush_or_conflict,
    refuse_while_live,
)
from flotilla.server.services.views import iso

PRINCIPAL_KINDS = ("user", "group")


@dataclass(frozen=True)
class Member:
    kind: str
    id: str
    name: str
    role: Role

    def view(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name, "role": self.role.value}


async def find_project_by_name(session: AsyncSession, name: str) -> ProjectModel | None:
    return (await session.execute(select(ProjectModel).where(ProjectModel.name == name))).scalar()


async def get_project(session: AsyncSession, ref: str) -> ProjectModel:
    """A project by id or name, or 404."""
    project = await session.get(ProjectModel, ref) or await find_project_by_name(session, ref)
    if project is None:
        raise NotFound(f"project {ref!r}")
    return project


async def readable_project(session: AsyncSession, caller: Identity, ref: str) -> ProjectModel:
    """A project the caller holds a role in (any, for admins); others are missing."""
    project = await get_project(session, ref)
    if not caller.is_admin and caller.role_in(project.name) is None:
        raise NotFound(f"project {ref!r}")
    return project


def require_project_admin(caller: Identity, project: ProjectModel) -> None:
    """Platform admins and the project's own admins manage its members."""
    if caller.is_admin or caller.role_in(project.name) == Role.ADMIN:
        return
    role = caller.role_in(project.name)
    held = f"is a {role.value} of" if role else "holds no role in"
    raise Forbidden(
        f"{caller.name} {held} project {project.name!r}: only its admins may change its members"
    )


async def list_projects(session: AsyncSession, caller: Identity) -> Sequence[ProjectModel]:
    query = select(ProjectModel).order_by(ProjectModel.name)
    if not caller.is_admin:
        query = query.where(ProjectModel.name.in_(caller.visible_projects()))
    return (await session.execute(query)).scalars().all()


async def members(session: AsyncSession, project: ProjectModel) -> list[Member]:
    rows = (
        await session.execute(
            select(ProjectMemberModel).where(ProjectMemberModel.project_id == project.id)
        )
    ).scalars()
    found = list(rows)
    ids = {r.principal_id for r in found}
    names: dict[tuple[str, str], str] = {}
    for kind, model in (("user", UserModel), ("group", GroupModel)):
        query = select(model.id, model.name).where(model.id.in_(ids))
        names.update({(kind, i): n for i, n in (await session.execute(query)).all()})
    out = [
        Member(
            r.principal_kind,
            r.principal_id,
            names[(r.principal_kind, r.principal_id)],
            Role(r.role),
        )
        for r in found
        if (r.principal_kind, r.principal_id) in names
    ]
    return sorted(out, key=lambda m: (m.kind, m.name))


def parse_role(value: str, field: str = "role") -> Role:
    try:
        return Role(value)
    except ValueError as e:
        raise invalid(field, f"{value!r} is not a role; one of admin, member, viewer") from e


async def find_principal(session: AsyncSession, kind: str, name: str) -> str | None:
    """The id of the user or group `name` (None if there is none)."""
    if kind not in PRINCIPAL_KINDS:
        raise invalid("kind", f"{kind!r} is not a member kind; one of user, group")
    found: UserModel | GroupModel | None = (
        await find_user_by_name(session, name)
        if kind == "user"
        else await find_group_by_name(session, name)
    )
    return None if found is None else found.id


async def set_member(
    session: AsyncSession,
    project: ProjectModel,
    kind: str,
    principal_id: str,
    name: str,
    role: Role,
    actor: str,
    now: datetime,
) -> bool:
    """Give a user or group `role` in the project. Idempotent: False if unchanged."""
    row = await session.get(ProjectMemberModel, (project.id, kind, principal_id))
    if row is not None and row.role == role.value:
        return False
    if row is None:
        session.add(
            ProjectMemberModel(
                project_id=project.id,
                principal_kind=kind,
                principal_id=principal_id,
                role=role.value,
            )
        )
    else:
        row.role = role.value
    record_event(
        session,
        kind="identity",
        message=f"{kind} {name} is {role.value} of project {project.name}",
        actor=actor,
        now=now,
    )
    return True


async def remove_member(
    session: AsyncSession,
    project: ProjectModel,
    kind: str,
    principal_id: str,
    name: str,
    actor: str,
    now: datetime,
) -> None:
    row = await session.get(ProjectMemberModel, (project.id, kind, principal_id))
    if row is None:
        raise NotFound(f"{kind} {name} in project {project.name!r}")
    await session.delete(row)
    record_event(
        session,
        kind="identity",
        message=f"{kind} {name} removed from project {project.name}",
        actor=actor,
        now=now,
    )


async def create_project(
    session: AsyncSession,
    *,
    name: str,
    description: str,
    actor: str,
    now: datetime,
    member_specs: Sequence[ProjectMemberSpec] = (),
    field: str = "name",
) -> ProjectModel:
    check_name(name, field)
    wanted = await resolve_members(session, member_specs, "members")
    if await find_project_by_name(session, name) is not None:
        raise Conflict(f"project {name!r} already exists")
    project = ProjectModel(id=uuid.uuid4().hex, name=name, description=description, created_at=now)
    session.add(project)
    await flush_or_conflict(session, f"project {name!r} already exists")
    record_event(session, kind="identity", message=f"project {name} created", actor=actor, now=now)
    await sync_members(session, project, wanted, actor, now)
    return project


async def delete_project(
    session: AsyncSession, project: ProjectModel, actor: str, now: datetime
) -> None:
    """Delete a project with its members, budgets and secrets; refused while live
    recipes are in it (their usage is billed to it)."""
    await refuse_while_live(
        session,
        RecipeModel.project == project.name,
        f"project {project.name} has",
        "delete them or move them to another project first",
    )
    await session.execute(
        delete(ProjectMemberModel).where(ProjectMemberModel.project_id == project.id)
    )
    await forget_owner(session, "project", project.name)
    await session.delete(project)
    record_event(
        session, kind="identity", message=f"project {project.name} deleted", actor=actor, now=now
    )


def project_view(project: ProjectModel, project_members: Sequence[Member]) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "description": project.description,
        "members": [m.view() for m in project_members],
        "created_at": iso(project.created_at),
    }


Wanted = dict[tuple[str, str], tuple[str, Role]]


async def resolve_members(
    session: AsyncSession, specs: Sequence[ProjectMemberSpec], field: str
) -> Wanted:
    """(kind, id) -> (name, role) for each listed member; 422 naming the unknown."""
    wanted: Wanted = {}
    for i, m in enumerate(specs):
        pid = await find_principal(session, m.kind, m.principal)
        if pid is None:
            raise invalid(f"{field}[{i}].{m.kind}", f"no {m.kind} named {m.principal!r}")
        wanted[(m.kind, pid)] = (m.principal, Role(m.role))
    return wanted


async def sync_members(
    session: AsyncSession,
    project: ProjectModel,
    wanted: Wanted,
    actor: str,
    now: datetime,
) -> bool:
    """Make the project's members exactly `wanted`. Returns whether anything changed."""
    changed = False
    for (kind, pid), (name, role) in wanted.items():
        changed = await set_member(session, project, kind, pid, name, role, actor, now) or changed
    for member in await members(session, project):
        if (member.kind, member.id) not in wanted:
            await remove_member(session, project, member.kind, member.id, member.name, actor, now)
            changed = True
    return changed


async def apply_project_spec(
    session: AsyncSession, spec: ProjectSpec, actor: str, now: datetime
) -> tuple[ProjectModel, bool]:
    """Create or update a project from a `type: project` recipe; its members become
    exactly the listed users and groups, with the listed roles."""
    wanted = await resolve_members(session, spec.members, "spec.members")
    project = await find_project_by_name(session, spec.name)
    changed = project is None
    if project is None:
        project = await create_project(
            session,
            name=spec.name,
            description=spec.description,
            actor=actor,
            now=now,
            field="spec.name",
        )
    elif project.description != spec.description:
        project.description = spec.description
        changed = True
    return project, await sync_members(session, project, wanted, actor, now) or changed


async def project_spec(session: AsyncSession, project: ProjectModel) -> dict[str, Any]:
    return {
        "name": project.name,
        "description": project.description,
        "members": [
            {m.kind: m.name, "role": m.role.value} for m in await members(session, project)
        ],
    }
