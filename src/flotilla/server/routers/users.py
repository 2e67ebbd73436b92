"""Users and service accounts (Saturn's `/api/users`, `/api/service_accounts`), their
SSH keys, and `/api/orgs/{org}/owners` (who a recipe may be owned by).

Platform admins create, update and delete users; a user may read and edit their own
email, full name and SSH keys. Others see themselves and the members of their groups
and projects, by name only. Views never include password hashes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.api.base import errors
from flotilla.api.users import (
    AddKeyRequest,
    CreateServiceAccountRequest,
    CreateUserRequest,
    OwnerList,
    ServiceAccountCreated,
    ServiceAccountList,
    SshKey,
    UpdateUserRequest,
    User,
    UserBrief,
    UserList,
)
from flotilla.errors import NotFound
from flotilla.server.db.models import GroupModel, UserModel
from flotilla.server.identity import Identity
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.identity import ssh_keys
from flotilla.server.services.identity import users as user_service
from flotilla.server.services.identity.groups import list_groups

router = APIRouter(prefix="/api", tags=["users"])

# The one organization a Flotilla server is (as in `routers/usage.py`).
DEFAULT_ORG = "default"


async def _view(session: AsyncSession, caller: Identity, user: UserModel) -> User | UserBrief:
    """In full for admins and the user themselves; others see names."""
    if caller.is_admin or user.id == caller.user_id:
        return User.model_validate(await user_service.user_view(session, user))
    return UserBrief.model_validate(user_service.brief_view(user))


@router.post("/users", status_code=201, responses=errors(403, 409, 422))
async def create_user(ctx: Ctx, caller: Caller, body: CreateUserRequest) -> User:
    caller.require_admin()
    async with ctx.transaction() as session:
        user = await user_service.create_user(
            session,
            name=body.username,
            now=ctx.clock.now(),
            actor=caller.name,
            email=body.email,
            full_name=body.full_name,
            ssh_public_keys=body.ssh_public_keys,
            admin=body.admin,
            password=body.password,
        )
        return User.model_validate(await user_service.user_view(session, user))


@router.get("/users", responses=errors(422))
async def list_users(ctx: Ctx, caller: Caller, service_accounts: bool | None = None) -> UserList:
    """The users the caller may see: in full for admins and themselves, others by name."""
    async with ctx.sessions() as session:
        users = await user_service.list_users(session, caller, service_accounts)
        views = [await _view(session, caller, u) for u in users]
    return UserList(users=views, next_key=None)


@router.get("/users/{user_id}", responses=errors(404))
async def get_user(ctx: Ctx, caller: Caller, user_id: str) -> User | UserBrief:
    """By id or name; in full for admins and the user themselves."""
    async with ctx.sessions() as session:
        user = await user_service.readable_user(session, caller, user_id)
        return await _view(session, caller, user)


@router.patch("/users/{user_id}", responses=errors(403, 404, 409, 422))
async def update_user(ctx: Ctx, caller: Caller, user_id: str, body: UpdateUserRequest) -> User:
    changes = user_service.UserChanges(**body.model_dump())
    async with ctx.transaction() as session:
        user = await user_service.readable_user(session, caller, user_id)
        await user_service.update_user(session, caller, user, changes, ctx.clock.now())
        return User.model_validate(await user_service.user_view(session, user))


@router.delete("/users/{user_id}", status_code=204, responses=errors(403, 404, 409))
async def delete_user(ctx: Ctx, caller: Caller, user_id: str) -> Response:
    caller.require_admin()
    async with ctx.transaction() as session:
        user = await user_service.get_user(session, user_id)
        await user_service.delete_user(session, user, caller.name, ctx.clock.now())
    return Response(status_code=204)


@router.post("/users/{user_id}/ssh_keys", status_code=201, responses=errors(403, 404, 409, 422))
async def add_ssh_key(ctx: Ctx, caller: Caller, user_id: str, body: AddKeyRequest) -> SshKey:
    async with ctx.transaction() as session:
        user = await user_service.readable_user(session, caller, user_id)
        user_service.require_self_or_admin(caller, user, "add SSH keys")
        return SshKey.model_validate(await ssh_keys.add_ssh_key(session, user, body.key))


@router.delete(
    "/users/{user_id}/ssh_keys/{fingerprint:path}", status_code=204, responses=errors(403, 404)
)
async def remove_ssh_key(ctx: Ctx, caller: Caller, user_id: str, fingerprint: str) -> Response:
    """`fingerprint` as `ssh-keygen -l` prints it (`SHA256:…`, the prefix optional)."""
    async with ctx.transaction() as session:
        user = await user_service.readable_user(session, caller, user_id)
        user_service.require_self_or_admin(caller, user, "remove SSH keys")
        ssh_keys.remove_ssh_key(user, fingerprint)
    return Response(status_code=204)


@router.post("/service_accounts", status_code=201, responses=errors(403, 409, 422))
async def create_service_account(
    ctx: Ctx, caller: Caller, body: CreateServiceAccountRequest
) -> ServiceAccountCreated:
    """Saturn's shape: `{"service_account": {...}}`. Tokens for it come from
    `POST /api/service_accounts/{id}/tokens`."""
    caller.require_admin()
    async with ctx.transaction() as session:
        user = await user_service.create_user(
            session,
            name=body.name,
            now=ctx.clock.now(),
            actor=caller.name,
            full_name=body.full_name,
            admin=body.admin,
            service_account=True,
            name_field="name",
        )
        view = await user_service.user_view(session, user)
        return ServiceAccountCreated.model_validate({"service_account": view})


@router.get("/service_accounts", responses=errors())
async def list_service_accounts(ctx: Ctx, caller: Caller) -> ServiceAccountList:
    async with ctx.sessions() as session:
        users = await user_service.list_users(session, caller, service_accounts=True)
        views = [await _view(session, caller, u) for u in users]
    return ServiceAccountList(service_accounts=views, next_key=None)


# Unset, not None: `description` is absent, as it always was, without `details`.
@router.get("/orgs/{org_id}/owners", responses=errors(404, 422), response_model_exclude_unset=True)
async def owners(
    ctx: Ctx,
    caller: Caller,
    org_id: str,
    all_users: bool = False,
    all_groups: bool = False,
    identity_type: str | None = None,
    details: bool = False,
) -> OwnerList:
    """Who a recipe may be owned by: the caller and their groups; for platform
    admins asking `all_users` / `all_groups`, every user / group."""
    if org_id != DEFAULT_ORG:
        raise NotFound(f"organization {org_id!r} (this server is the organization {DEFAULT_ORG!r})")
    async with ctx.sessions() as session:
        user_query = select(UserModel).order_by(UserModel.name)
        if not (caller.is_admin and all_users):
            user_query = user_query.where(UserModel.id == caller.user_id)
        users = (await session.execute(user_query)).scalars().all()
        if caller.is_admin and all_groups:
            groups = (
                (await session.execute(select(GroupModel).order_by(GroupModel.name)))
                .scalars()
                .all()
            )
        else:
            groups = [g for g in await list_groups(session, caller) if g.name in caller.groups]
    out: list[dict[str, Any]] = []
    if identity_type in (None, "user"):
        out += [_owner(u.id, u.name, "user", u.full_name, details) for u in users]
    if identity_type in (None, "group"):
        out += [_owner(g.id, g.name, "group", g.description, details) for g in groups]
    return OwnerList.model_validate({"owners": out, "next_key": None})


def _owner(id_: str, name: str, kind: str, about: str, details: bool) -> dict[str, Any]:
    owner = {"id": id_, "name": name, "identity_type": kind}
    if details:
        owner["description"] = about
    return owner
