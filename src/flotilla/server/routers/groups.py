"""Groups: platform admins create, change and delete them and their members;
members see their own groups and those that are members of their projects."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.api.base import errors
from flotilla.api.groups import CreateGroupRequest, Group, GroupList, UpdateGroupRequest
from flotilla.server.db.models import GroupModel
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.identity import groups as group_service
from flotilla.server.services.identity.users import get_user

router = APIRouter(prefix="/api/groups", tags=["groups"])


async def _view(session: AsyncSession, group: GroupModel) -> Group:
    return Group.model_validate(
        group_service.group_view(group, await group_service.members(session, group))
    )


@router.post("", status_code=201, responses=errors(403, 409, 422))
async def create_group(ctx: Ctx, caller: Caller, body: CreateGroupRequest) -> Group:
    caller.require_admin()
    async with ctx.transaction() as session:
        group = await group_service.create_group(
            session,
            name=body.name,
            description=body.description,
            member_names=body.members,
            actor=caller.name,
            now=ctx.clock.now(),
        )
        return await _view(session, group)


@router.get("", responses=errors())
async def list_groups(ctx: Ctx, caller: Caller) -> GroupList:
    async with ctx.sessions() as session:
        groups = await group_service.list_groups(session, caller)
        views = [await _view(session, g) for g in groups]
    return GroupList(groups=views, next_key=None)


@router.get("/{group}", responses=errors(404))
async def get_group(ctx: Ctx, caller: Caller, group: str) -> Group:
    async with ctx.sessions() as session:
        found = await group_service.readable_group(session, caller, group)
        return await _view(session, found)


@router.patch("/{group}", responses=errors(403, 404, 422))
async def update_group(ctx: Ctx, caller: Caller, group: str, body: UpdateGroupRequest) -> Group:
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await group_service.get_group(session, group)
        if body.description is not None:
            found.description = body.description
        return await _view(session, found)


@router.delete("/{group}", status_code=204, responses=errors(403, 404, 409))
async def delete_group(ctx: Ctx, caller: Caller, group: str) -> Response:
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await group_service.get_group(session, group)
        await group_service.delete_group(session, found, caller.name, ctx.clock.now())
    return Response(status_code=204)


@router.put("/{group}/members/{user}", responses=errors(403, 404))
async def add_member(ctx: Ctx, caller: Caller, group: str, user: str) -> Group:
    """Idempotent: adding a member twice is one membership."""
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await group_service.get_group(session, group)
        member = await get_user(session, user)
        await group_service.add_member(session, found, member, caller.name, ctx.clock.now())
        return await _view(session, found)


@router.delete("/{group}/members/{user}", status_code=204, responses=errors(403, 404))
async def remove_member(ctx: Ctx, caller: Caller, group: str, user: str) -> Response:
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await group_service.get_group(session, group)
        member = await get_user(session, user)
        await group_service.remove_member(session, found, member, caller.name, ctx.clock.now())
    return Response(status_code=204)
