"""Groups (`/api/groups`): their members, and the Unix group each is on nodes."""

from __future__ import annotations

from pydantic import Field

from flotilla.api.base import ApiModel


class Group(ApiModel):
    id: str
    name: str
    description: str
    unix_name: str  # the Unix group on nodes (given at creation, read-only)
    gid: int
    members: list[str] = Field(description="user names, sorted")
    created_at: str


class GroupList(ApiModel):
    groups: list[Group]
    next_key: str | None  # Saturn's paging key; every group is on one page


class CreateGroupRequest(ApiModel):
    name: str
    description: str = Field("", max_length=4096)
    members: list[str] = Field(default_factory=list, description="user names")


class UpdateGroupRequest(ApiModel):
    description: str | None = Field(None, max_length=4096)
