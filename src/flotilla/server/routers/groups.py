"""Groups: platform admins create, change and delete them and their members;
members see their own groups and those that are members of their projects."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import groups as group_service
from flotilla.server.services.users import get_user

router = APIRouter(prefix="/api/groups", tags=["groups"])


class CreateGroupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = Field("", max_length=4096)
    members: list[str] = Field(default_factory=list, description="user names")


class UpdateGroupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    description: str | None = Field(None, max_length=4096)


@router.post("", status_code=201)
async def create_group(ctx: Ctx, caller: Caller, body: CreateGroupRequest) -> dict[str, Any]:
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
        return group_service.group_view(group, await group_service.members(session, group))


@router.get("")
async def list_groups(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    async with ctx.sessions() as session:
        groups = await group_service.list_groups(session, caller)
        views = [
            group_service.group_view(g, await group_service.members(session, g)) for g in groups
        ]
    return {"groups": views, "next_key": None}


@router.get("/{group}")
async def get_group(ctx: Ctx, caller: Caller, group: str) -> dict[str, Any]:
    async with ctx.sessions() as session:
        found = await group_service.readable_group(session, caller, group)
        return group_service.group_view(found, await group_service.members(session, found))


@router.patch("/{group}")
async def update_group(
    ctx: Ctx, caller: Caller, group: str, body: UpdateGroupRequest
) -> dict[str, Any]:
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await group_service.get_group(session, group)
        if body.description is not None:
            found.description = body.description
        return group_service.group_view(found, await group_service.members(session, found))


@router.delete("/{group}", status_code=204)
async def delete_group(ctx: Ctx, caller: Caller, group: str) -> Response:
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await group_service.get_group(session, group)
        await group_service.delete_group(session, found, caller.name, ctx.clock.now())
    return Response(status_code=204)


@router.put("/{group}/members/{user}")
async def add_member(ctx: Ctx, caller: Caller, group: str, user: str) -> dict[str, Any]:
    """Idempotent: adding a member twice is one membership."""
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await group_service.get_group(session, group)
        member = await get_user(session, user)
        await group_service.add_member(session, found, member, caller.name, ctx.clock.now())
        return group_service.group_view(found, await group_service.members(session, found))


@router.delete("/{group}/members/{user}", status_code=204)
async def remove_member(ctx: Ctx, caller: Caller, group: str, user: str) -> Response:
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await group_service.get_group(session, group)
        member = await get_user(session, user)
        await group_service.remove_member(session, found, member, caller.name, ctx.clock.now())
    return Response(status_code=204)
