"""Users and service accounts: create, read, update, delete, SSH keys, and the views
the API returns (never a password hash). Called by `routers/users.py` and, for
`type: user` recipes, by `services/recipes.py`.

User and group names share one namespace (a recipe's `owner` names exactly one of
them): `ensure_name_free` is checked before either is created.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.unixids import unix_name
from flotilla.errors import Conflict, Forbidden, NotFound
from flotilla.recipes.identity import UserSpec, check_email, check_name, invalid
from flotilla.server.auth import passwords
from flotilla.server.db.models import (
    ApiTokenModel,
    GroupMemberModel,
    GroupModel,
    ProjectMemberModel,
    ProjectModel,
    RecipeModel,
    SessionModel,
    UserModel,
)
from flotilla.server.identity import ALL_SCOPES, Identity, load_identity
from flotilla.server.security import ADMIN_USER
from flotilla.server.services.events import record_event
from flotilla.server.services.identity.owners import forget_owner
from flotilla.server.services.identity.ssh_keys import (
    canonical_keys,
    check_keys_unclaimed,
    ssh_key_view,
)
from flotilla.server.services.views import iso

MIN_PASSWORD_LENGTH = 8


@dataclass(frozen=True)
class UserChanges:
    """A PATCH: None leaves a field as it is."""

    username: str | None = None
    email: str | None = None
    full_name: str | None = None
    ssh_public_keys: list[str] | None = None
    admin: bool | None = None
    locked: bool | None = None
    password: str | None = None


async def ensure_name_free(session: AsyncSession, name: str) -> None:
    """409 when a user or a group already holds `name`."""
    if await find_user_by_name(session, name) is not None:
        raise Conflict(f"the name {name!r} is taken by a user (users and groups share names)")
    group = (await session.execute(select(GroupModel.id).where(GroupModel.name == name))).first()
    if group is not None:
        raise Conflict(f"the name {name!r} is taken by a group (users and groups share names)")


async def flush_or_conflict(session: AsyncSession, message: str) -> None:
    """Flush; a unique constraint hit by a concurrent request becomes a 409."""
    try:
        await session.flush()
    except IntegrityError as e:
        raise Conflict(message) from e


async def find_user_by_name(session: AsyncSession, name: str) -> UserModel | None:
    return (await session.execute(select(UserModel).where(UserModel.name == name))).scalar()


async def get_user(session: AsyncSession, ref: str) -> UserModel:
    """A user by id or name, or 404."""
    user = await session.get(UserModel, ref) or await find_user_by_name(session, ref)
    if user is None:
        raise NotFound(f"user {ref!r}")
    return user


async def hash_password(password: str) -> str:
    """argon2id, off the event loop (it takes tens of milliseconds on purpose)."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise invalid("password", f"must be at least {MIN_PASSWORD_LENGTH} characters")
    return await asyncio.to_thread(passwords.hash_password, password)


def _email(value: str | None, field: str = "email") -> str | None:
    try:
        return check_email(value)
    except ValueError as e:
        raise invalid(field, str(e)) from e


async def create_user(
    session: AsyncSession,
    *,
    name: str,
    now: datetime,
    actor: str,
    email: str | None = None,
    full_name: str = "",
    ssh_public_keys: Sequence[str] = (),
    admin: bool = False,
    service_account: bool = False,
    password: str | None = None,
    name_field: str = "username",
) -> UserModel:
    check_name(name, name_field)
    if service_account and password:
        raise invalid("password", "service accounts have no password: they use API tokens only")
    if service_account and ssh_public_keys:
        raise invalid("ssh_public_keys", "service accounts use API tokens only")
    user = UserModel(
        id=uuid.uuid4().hex,
        name=name,
        email=_email(email),
        full_name=full_name,
        is_admin=admin,
        is_service_account=service_account,
        password_hash=await hash_password(password) if password else None,
        ssh_public_keys=canonical_keys(ssh_public_keys, "ssh_public_keys"),
        locked=False,
        created_at=now,
    )
    await ensure_name_free(session, name)
    await check_keys_unclaimed(session, user.ssh_public_keys, None)
    session.add(user)
    await flush_or_conflict(session, f"the name {name!r} is taken")
    kind = "service account" if service_account else "user"
    record_event(session, kind="identity", message=f"{kind} {name} created", actor=actor, now=now)
    return user


async def update_user(
    session: AsyncSession, caller: Identity, user: UserModel, changes: UserChanges, now: datetime
) -> list[str]:
    """Apply a PATCH. The user themselves may change email, full name and SSH keys;
    admin, locked and password need a platform admin. A field sent with its current
    value is no change (saturn-client always sends `admin` and `locked`). Returns
    the names of the fields that changed."""
    if changes.username is not None and changes.username != user.name:
        raise Conflict("users cannot be renamed: their name owns recipes, secrets and usage")
    if user.id != caller.user_id:
        caller.require_admin()
    changed: list[str] = []
    if changes.email is not None and _email(changes.email) != user.email:
        user.email = _email(changes.email)
        changed.append("email")
    if changes.full_name is not None and changes.full_name != user.full_name:
        user.full_name = changes.full_name
        changed.append("full_name")
    if changes.ssh_public_keys is not None:
        if user.is_service_account and changes.ssh_public_keys:
            raise invalid("ssh_public_keys", "service accounts use API tokens only")
        keys = canonical_keys(changes.ssh_public_keys, "ssh_public_keys")
        await check_keys_unclaimed(session, keys, user.id)
        if keys != list(user.ssh_public_keys):
            user.ssh_public_keys = keys
            changed.append("ssh_public_keys")
    if changes.admin is not None and changes.admin != user.is_admin:
        caller.require_admin()
        if user.name == ADMIN_USER:
            raise Conflict(f"the bootstrap {ADMIN_USER!r} user cannot be demoted")
        user.is_admin = changes.admin
        changed.append("admin")
    if changes.locked is not None and changes.locked != user.locked:
        caller.require_admin()
        if user.name == ADMIN_USER:
            raise Conflict(f"the bootstrap {ADMIN_USER!r} user cannot be locked")
        user.locked = changes.locked
        changed.append("locked")
    if changes.password is not None:
        caller.require_admin()
        if user.is_service_account:
            raise invalid("password", "service accounts have no password: they use API tokens only")
        user.password_hash = await hash_password(changes.password)
        changed.append("password")
    if changed:
        record_event(
            session,
            kind="identity",
            message=f"user {user.name} updated ({', '.join(changed)})",
            actor=caller.name,
            now=now,
        )
    return changed


async def delete_user(session: AsyncSession, user: UserModel, actor: str, now: datetime) -> None:
    """Delete a user with their tokens, sessions, memberships, budgets and secrets.
    Refused for the bootstrap admin and while they own live recipes: deleting those
    first is a decision about running work that an admin should make explicitly."""
    if user.name == ADMIN_USER:
        raise Conflict(f"the bootstrap {ADMIN_USER!r} user cannot be deleted")
    await refuse_if_owner(session, "user", user.name)
    await session.execute(
        delete(ProjectMemberModel).where(
            ProjectMemberModel.principal_kind == "user", ProjectMemberModel.principal_id == user.id
        )
    )
    for model in (GroupMemberModel, ApiTokenModel, SessionModel):
        await session.execute(delete(model).where(model.user_id == user.id))
    await forget_owner(session, "user", user.name)
    await session.delete(user)
    record_event(
        session, kind="identity", message=f"user {user.name} deleted", actor=actor, now=now
    )


async def refuse_if_owner(session: AsyncSession, kind: str, name: str) -> None:
    """409 while `name` owns live recipes (jobs, fleets...)."""
    await refuse_while_live(
        session,
        RecipeModel.owner == name,
        f"{kind} {name} owns",
        "delete them or apply them with another owner first",
    )


async def refuse_while_live(
    session: AsyncSession, where: ColumnElement[bool], who: str, advice: str
) -> None:
    """409 while live recipes match `where`, naming up to five of them."""
    rows = (
        await session.execute(
            select(RecipeModel.type, RecipeModel.name)
            .where(where, RecipeModel.deleted_at.is_(None))
            .order_by(RecipeModel.type, RecipeModel.name)
        )
    ).all()
    if rows:
        listed = ", ".join(f"{t} {n}" for t, n in rows[:5]) + (" ..." if len(rows) > 5 else "")
        raise Conflict(f"{who} {len(rows)} live recipe(s) ({listed}): {advice}")


def brief_view(user: UserModel) -> dict[str, Any]:
    """What any user may see of another they share a group or project with."""
    return {
        "id": user.id,
        "username": user.name,
        "full_name": user.full_name,
        "service_account": user.is_service_account,
    }


async def user_view(session: AsyncSession, user: UserModel) -> dict[str, Any]:
    """Saturn's user fields, plus groups, project roles, SSH keys and the Unix
    account the user's tasks run as on nodes (read-only: given at creation)."""
    identity = await load_identity(session, user, ALL_SCOPES, "view")
    return {
        **brief_view(user),
        **unix_view(user),
        "email": user.email,
        "admin": user.is_admin,
        "locked": user.locked,
        "active": not user.locked,
        "has_password": user.password_hash is not None,
        "ssh_keys": [ssh_key_view(k) for k in user.ssh_public_keys],
        "groups": sorted(identity.groups),
        "projects": {name: role.value for name, role in sorted(identity.projects.items())},
        "created_at": iso(user.created_at),
    }


def unix_view(user: UserModel) -> dict[str, Any]:
    """The user's Unix account: its name, UID, and the GID of its private group
    (the same number; `core/unixids.py`)."""
    return {"unix_name": unix_name(user.name), "uid": user.uid, "gid": user.uid}


async def visible_user_ids(session: AsyncSession, caller: Identity) -> set[str] | None:
    """Ids of the users `caller` may see (None: all of them). Others see themselves
    and the members of their groups and of their projects."""
    if caller.is_admin:
        return None
    ids = {caller.user_id}
    group_ids = set(
        (
            await session.execute(select(GroupModel.id).where(GroupModel.name.in_(caller.groups)))
        ).scalars()
    )
    user_ids, more_groups = await project_principals(session, set(caller.projects))
    ids |= user_ids
    group_ids |= more_groups
    if group_ids:
        ids |= set(
            (
                await session.execute(
                    select(GroupMemberModel.user_id).where(GroupMemberModel.group_id.in_(group_ids))
                )
            ).scalars()
        )
    return ids


async def project_principals(
    session: AsyncSession, project_names: set[str]
) -> tuple[set[str], set[str]]:
    """(user ids, group ids) holding any role in the named projects."""
    if not project_names:
        return set(), set()
    rows = (
        await session.execute(
            select(ProjectMemberModel.principal_kind, ProjectMemberModel.principal_id)
            .join(ProjectModel, ProjectModel.id == ProjectMemberModel.project_id)
            .where(ProjectModel.name.in_(project_names))
        )
    ).all()
    users = {pid for kind, pid in rows if kind == "user"}
    return users, {pid for kind, pid in rows if kind == "group"}


async def list_users(
    session: AsyncSession, caller: Identity, service_accounts: bool | None = None
) -> Sequence[UserModel]:
    query = select(UserModel).order_by(UserModel.name)
    visible = await visible_user_ids(session, caller)
    if visible is not None:
        query = query.where(UserModel.id.in_(visible))
    if service_accounts is not None:
        query = query.where(UserModel.is_service_account.is_(service_accounts))
    return (await session.execute(query)).scalars().all()


async def readable_user(session: AsyncSession, caller: Identity, ref: str) -> UserModel:
    """A user the caller may see; those they may not are reported missing."""
    user = await get_user(session, ref)
    visible = await visible_user_ids(session, caller)
    if visible is not None and user.id not in visible:
        raise NotFound(f"user {ref!r}")
    return user


def require_self_or_admin(caller: Identity, user: UserModel, what: str) -> None:
    if user.id != caller.user_id and not caller.is_admin:
        raise Forbidden(f"only {user.name} or a platform admin may {what}")


async def apply_user_spec(
    session: AsyncSession, spec: UserSpec, actor: str, now: datetime
) -> tuple[UserModel, bool]:
    """Create or update a user from a `type: user` recipe (admins only)."""
    user = await find_user_by_name(session, spec.name)
    if user is None:
        created = await create_user(
            session,
            name=spec.name,
            now=now,
            actor=actor,
            email=spec.email,
            full_name=spec.full_name,
            ssh_public_keys=spec.ssh_public_keys,
            admin=spec.admin,
            service_account=spec.service_account,
            name_field="spec.name",
        )
        return created, True
    if user.is_service_account != spec.service_account:
        kind = "a service account" if user.is_service_account else "a person"
        raise Conflict(f"{spec.name} exists as {kind}; service_account cannot change")
    if user.name == ADMIN_USER and not spec.admin:
        raise Conflict(f"the bootstrap {ADMIN_USER!r} user cannot be demoted")
    wanted = {
        "email": spec.email,
        "full_name": spec.full_name,
        "ssh_public_keys": list(spec.ssh_public_keys),
        "is_admin": spec.admin,
    }
    changed = [k for k, v in wanted.items() if getattr(user, k) != v]
    if "ssh_public_keys" in changed:
        await check_keys_unclaimed(session, spec.ssh_public_keys, user.id)
    for key in changed:
        setattr(user, key, wanted[key])
    if changed:
        record_event(
            session,
            kind="identity",
            message=f"user {user.name} updated ({', '.join(changed)})",
            actor=actor,
            now=now,
        )
    return user, bool(changed)


def user_spec(user: UserModel) -> dict[str, Any]:
    """The user as a recipe spec (`flo get -t user NAME`, `flo export`)."""
    return {
        "name": user.name,
        "email": user.email,
        "full_name": user.full_name,
        "ssh_public_keys": list(user.ssh_public_keys),
        "admin": user.is_admin,
        "service_account": user.is_service_account,
    }
