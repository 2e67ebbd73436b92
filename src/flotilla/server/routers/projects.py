"""Projects and their members. Platform admins create, change and delete projects;
a project's admins (and platform admins) add, remove and re-role its members. Any
member sees the project and who is in it."""

from __future__ import annotations

from fastapi import APIRouter, Response
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.api.base import errors
from flotilla.api.projects import (
    CreateProjectRequest,
    MemberRequest,
    Project,
    ProjectList,
    UpdateProjectRequest,
)
from flotilla.errors import NotFound
from flotilla.server.db.models import ProjectModel
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.identity import projects as project_service

router = APIRouter(prefix="/api/projects", tags=["projects"])


@router.post("", status_code=201, responses=errors(403, 409, 422))
async def create_project(ctx: Ctx, caller: Caller, body: CreateProjectRequest) -> Project:
    caller.require_admin()
    async with ctx.transaction() as session:
        project = await project_service.create_project(
            session,
            name=body.name,
            description=body.description,
            member_specs=body.members,
            actor=caller.name,
            now=ctx.clock.now(),
        )
        return await _view(session, project)


async def _view(session: AsyncSession, project: ProjectModel) -> Project:
    return Project.model_validate(
        project_service.project_view(project, await project_service.members(session, project))
    )


@router.get("", responses=errors())
async def list_projects(ctx: Ctx, caller: Caller) -> ProjectList:
    async with ctx.sessions() as session:
        projects = await project_service.list_projects(session, caller)
        views = [await _view(session, p) for p in projects]
    return ProjectList(projects=views, next_key=None)


@router.get("/{project}", responses=errors(404))
async def get_project(ctx: Ctx, caller: Caller, project: str) -> Project:
    async with ctx.sessions() as session:
        found = await project_service.readable_project(session, caller, project)
        return await _view(session, found)


@router.patch("/{project}", responses=errors(403, 404, 422))
async def update_project(
    ctx: Ctx, caller: Caller, project: str, body: UpdateProjectRequest
) -> Project:
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await project_service.get_project(session, project)
        if body.description is not None:
            found.description = body.description
        return await _view(session, found)


@router.delete("/{project}", status_code=204, responses=errors(403, 404, 409))
async def delete_project(ctx: Ctx, caller: Caller, project: str) -> Response:
    caller.require_admin()
    async with ctx.transaction() as session:
        found = await project_service.get_project(session, project)
        await project_service.delete_project(session, found, caller.name, ctx.clock.now())
    return Response(status_code=204)


@router.put("/{project}/members/{kind}/{name}", responses=errors(403, 404, 422))
async def set_member(
    ctx: Ctx, caller: Caller, project: str, kind: str, name: str, body: MemberRequest
) -> Project:
    """Give a user or a group (`kind`) a role in the project; idempotent."""
    role = project_service.parse_role(body.role)
    async with ctx.transaction() as session:
        found = await project_service.readable_project(session, caller, project)
        project_service.require_project_admin(caller, found)
        pid = await project_service.find_principal(session, kind, name)
        if pid is None:
            raise NotFound(f"{kind} {name!r}")
        await project_service.set_member(
            session, found, kind, pid, name, role, caller.name, ctx.clock.now()
        )
        return await _view(session, found)


@router.delete("/{project}/members/{kind}/{name}", status_code=204, responses=errors(403, 404, 422))
async def remove_member(ctx: Ctx, caller: Caller, project: str, kind: str, name: str) -> Response:
    async with ctx.transaction() as session:
        found = await project_service.readable_project(session, caller, project)
        project_service.require_project_admin(caller, found)
        pid = await project_service.find_principal(session, kind, name)
        if pid is None:
            raise NotFound(f"{kind} {name!r}")
        await project_service.remove_member(
            session, found, kind, pid, name, caller.name, ctx.clock.now()
        )
    return Response(status_code=204)
