"""Groups of users: create, read, update, delete, membership, and the `type: group`
recipe. A group can own resources and hold a role in projects, so deleting one is
refused while it owns live recipes. Called by `routers/groups.py` and
`services/recipes.py`; platform admins only change groups (the routers check)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.unixids import unix_name
from flotilla.errors import NotFound
from flotilla.recipes.identity import GroupSpec, check_name, invalid
from flotilla.server.db.models import (
    GroupMemberModel,
    GroupModel,
    ProjectMemberModel,
    UserModel,
)
from flotilla.server.identity import Identity
from flotilla.server.services.events import record_event
from flotilla.server.services.identity.owners import forget_owner
from flotilla.server.services.identity.users import (
    ensure_name_free,
    find_user_by_name,
    flush_or_conflict,
    project_principals,
    refuse_if_owner,
)
from flotilla.server.services.views import iso


async def find_group_by_name(session: AsyncSession, name: str) -> GroupModel | None:
    return (await session.execute(select(GroupModel).where(GroupModel.name == name))).scalar()


async def find_group(session: AsyncSession, ref: str) -> GroupModel | None:
    """A group by id or name."""
    return await session.get(GroupModel, ref) or await find_group_by_name(session, ref)


async def get_group(session: AsyncSession, ref: str) -> GroupModel:
    group = await find_group(session, ref)
    if group is None:
        raise NotFound(f"group {ref!r}")
    return group


async def visible_group_ids(session: AsyncSession, caller: Identity) -> set[str] | None:
    """Groups the caller may see (None: all): theirs and those in their projects."""
    if caller.is_admin:
        return None
    own = set(
        (
            await session.execute(select(GroupModel.id).where(GroupModel.name.in_(caller.groups)))
        ).scalars()
    )
    _, in_projects = await project_principals(session, set(caller.projects))
    return own | in_projects


async def readable_group(session: AsyncSession, caller: Identity, ref: str) -> GroupModel:
    group = await get_group(session, ref)
    visible = await visible_group_ids(session, caller)
    if visible is not None and group.id not in visible:
        raise NotFound(f"group {ref!r}")
    return group


async def list_groups(session: AsyncSession, caller: Identity) -> Sequence[GroupModel]:
    query = select(GroupModel).order_by(GroupModel.name)
    visible = await visible_group_ids(session, caller)
    if visible is not None:
        query = query.where(GroupModel.id.in_(visible))
    return (await session.execute(query)).scalars().all()


async def members(session: AsyncSession, group: GroupModel) -> list[UserModel]:
    query = (
        select(UserModel)
        .join(GroupMemberModel, GroupMemberModel.user_id == UserModel.id)
        .where(GroupMemberModel.group_id == group.id)
        .order_by(UserModel.name)
    )
    return list((await session.execute(query)).scalars().all())


async def create_group(
    session: AsyncSession,
    *,
    name: str,
    description: str,
    member_names: Sequence[str],
    actor: str,
    now: datetime,
    field: str = "name",
) -> GroupModel:
    check_name(name, field)
    users = [await _member(session, m, f"members[{i}]") for i, m in enumerate(member_names)]
    await ensure_name_free(session, name)
    group = GroupModel(id=uuid.uuid4().hex, name=name, description=description, created_at=now)
    session.add(group)
    await flush_or_conflict(session, f"the name {name!r} is taken")
    for user in {u.id: u for u in users}.values():
        session.add(GroupMemberModel(group_id=group.id, user_id=user.id))
    record_event(session, kind="identity", message=f"group {name} created", actor=actor, now=now)
    return group


async def _member(session: AsyncSession, name: str, field: str) -> UserModel:
    user = await find_user_by_name(session, name)
    if user is None:
        raise invalid(field, f"no user named {name!r}")
    return user


async def add_member(
    session: AsyncSession, group: GroupModel, user: UserModel, actor: str, now: datetime
) -> bool:
    """Idempotent: False when the user was already a member."""
    if await session.get(GroupMemberModel, (group.id, user.id)) is not None:
        return False
    session.add(GroupMemberModel(group_id=group.id, user_id=user.id))
    record_event(
        session,
        kind="identity",
        message=f"{user.name} added to group {group.name}",
        actor=actor,
        now=now,
    )
    return True


async def remove_member(
    session: AsyncSession, group: GroupModel, user: UserModel, actor: str, now: datetime
) -> None:
    row = await session.get(GroupMemberModel, (group.id, user.id))
    if row is None:
        raise NotFound(f"{user.name} in group {group.name!r}")
    await session.delete(row)
    record_event(
        session,
        kind="identity",
        message=f"{user.name} removed from group {group.name}",
        actor=actor,
        now=now,
    )


async def delete_group(session: AsyncSession, group: GroupModel, actor: str, now: datetime) -> None:
    """Delete a group with its memberships, project roles, budgets and secrets;
    refused while it owns live recipes."""
    await refuse_if_owner(session, "group", group.name)
    await session.execute(
        delete(ProjectMemberModel).where(
            ProjectMemberModel.principal_kind == "group",
            ProjectMemberModel.principal_id == group.id,
        )
    )
    await session.execute(delete(GroupMemberModel).where(GroupMemberModel.group_id == group.id))
    await forget_owner(session, "group", group.name)
    await session.delete(group)
    record_event(
        session, kind="identity", message=f"group {group.name} deleted", actor=actor, now=now
    )


def group_view(group: GroupModel, member_users: Sequence[UserModel]) -> dict[str, Any]:
    return {
        "id": group.id,
        "name": group.name,
        "description": group.description,
        # The Unix group on nodes (read-only: given at creation; `core/unixids.py`).
        "unix_name": unix_name(group.name),
        "gid": group.gid,
        "members": [u.name for u in member_users],
        "created_at": iso(group.created_at),
    }


async def apply_group_spec(
    session: AsyncSession, spec: GroupSpec, actor: str, now: datetime
) -> tuple[GroupModel, bool]:
    """Create or update a group from a `type: group` recipe; its members become
    exactly the listed users."""
    wanted = [await _member(session, m, f"spec.members[{i}]") for i, m in enumerate(spec.members)]
    group = await find_group_by_name(session, spec.name)
    if group is None:
        created = await create_group(
            session,
            name=spec.name,
            description=spec.description,
            member_names=spec.members,
            actor=actor,
            now=now,
            field="spec.name",
        )
        return created, True
    changed = False
    if group.description != spec.description:
        group.description = spec.description
        changed = True
    current = {u.id: u for u in await members(session, group)}
    wanted_ids = {u.id for u in wanted}
    for user in wanted:
        if user.id not in current:
            changed = await add_member(session, group, user, actor, now) or changed
    for user_id, user in current.items():
        if user_id not in wanted_ids:
            await remove_member(session, group, user, actor, now)
            changed = True
    return group, changed


async def group_spec(session: AsyncSession, group: GroupModel) -> dict[str, Any]:
    return {
        "name": group.name,
        "description": group.description,
        "members": [u.name for u in await members(session, group)],
    }
