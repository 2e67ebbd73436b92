"""Projects (`/api/projects`) and their members: users and groups, each with a role.

A new project's members are written as in a `type: project` recipe, so the request
takes the recipe's own member spec (`recipes/identity.py`, pure: no I/O) and its
checks rather than a copy of them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from flotilla.api.base import ApiModel
from flotilla.recipes.identity import ProjectMemberSpec, RoleName


class ProjectMember(ApiModel):
    kind: Literal["user", "group"]
    name: str
    role: RoleName


class Project(ApiModel):
    id: str
    name: str
    description: str
    members: list[ProjectMember] = Field(description="groups, then users; each by name")
    created_at: str


class ProjectList(ApiModel):
    projects: list[Project]
    next_key: str | None  # Saturn's paging key; every project is on one page


class CreateProjectRequest(ApiModel):
    name: str
    description: str = Field("", max_length=4096)
    members: list[ProjectMemberSpec] = Field(
        default_factory=list, description="[{user: NAME, role}, {group: NAME, role}]"
    )


class UpdateProjectRequest(ApiModel):
    description: str | None = Field(None, max_length=4096)


class MemberRequest(ApiModel):
    role: str = Field("member", description="admin, member or viewer")
