"""Who is calling and what they may do: the one place access rules live.

A caller is a user (or service account) authenticated by an API token or a session
JWT (`security.py`). Their power is the intersection of what the user may do and
what the credential's scopes allow:

- `read` scope: GET requests; `write`: anything that changes state; `admin`: the
  platform admin's powers, and only if the user is a platform admin.
- A resource has an `owner` (a user or a group; the names share one namespace) and
  optionally a `project`. Reading needs: being the owner, being in the owning
  group, or any role in the project. Changing needs `write` and either being a
  project admin, or being the owner / in the owning group while holding at least
  `member` in the project (when it has one). Viewers read only.
- Platform admins may do everything.

Routers call `can_read`/`can_write` (or `require_*`) on every resource they touch;
listings filter with `visible_owners`/`visible_projects`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import Forbidden, NotFound
from flotilla.server.db.models import (
    GroupMemberModel,
    GroupModel,
    ProjectMemberModel,
    ProjectModel,
    UserModel,
)


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


ALL_SCOPES = frozenset(s.value for s in Scope)


class Role(StrEnum):
    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return {"viewer": 0, "member": 1, "admin": 2}[self.value]


@dataclass(frozen=True)
class Identity:
    user_id: str
    name: str
    # The user is a platform admin *and* the credential carries the admin scope.
    is_admin: bool
    scopes: frozenset[str] = ALL_SCOPES
    groups: frozenset[str] = frozenset()
    # Project name -> the best role the user holds there, directly or via a group.
    projects: dict[str, Role] = field(default_factory=dict)
    auth_method: str = "api_token"
    is_service_account: bool = False

    def owns(self, owner: str) -> bool:
        return owner == self.name or owner in self.groups

    def role_in(self, project: str | None) -> Role | None:
        return self.projects.get(project) if project else None

    def can_read(self, owner: str, project: str | None) -> bool:
        if self.is_admin:
            return True
        return self.owns(owner) or self.role_in(project) is not None

    def can_write(self, owner: str, project: str | None) -> bool:
        if Scope.WRITE not in self.scopes:
            return False
        if self.is_admin:
            return True
        role = self.role_in(project)
        if role == Role.ADMIN:
            return True
        if not self.owns(owner):
            return False
        return project is None or (role is not None and role.rank >= Role.MEMBER.rank)

    def require_read(self, owner: str, project: str | None, what: str) -> None:
        """Unreadable resources are reported as missing: their existence is private."""
        if not self.can_read(owner, project):
            raise NotFound(what)

    def require_write(self, owner: str, project: str | None, what: str) -> None:
        self.require_read(owner, project, what)
        if not self.can_write(owner, project):
            raise Forbidden(self.write_refusal(owner, project, what))

    def write_refusal(self, owner: str, project: str | None, what: str) -> str:
        if Scope.WRITE not in self.scopes:
            return "this token is read-only (it lacks the 'write' scope)"
        role = self.role_in(project)
        if role == Role.VIEWER:
            return f"{self.name} is a viewer of project {project!r}: read only"
        return f"{self.name} may not change {what}, owned by {owner!r}"

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("only platform admins (with an 'admin'-scoped token) may do this")

    def visible_owners(self) -> set[str]:
        return {self.name, *self.groups}

    def visible_projects(self) -> set[str]:
        return set(self.projects)


async def load_identity(
    session: AsyncSession,
    user: UserModel,
    scopes: frozenset[str],
    auth_method: str,
) -> Identity:
    """The identity of `user` holding a credential with `scopes`: their groups and
    their best role in each project (directly or through a group)."""
    group_rows = (
        await session.execute(
            select(GroupModel.id, GroupModel.name)
            .join(GroupMemberModel, GroupMemberModel.group_id == GroupModel.id)
            .where(GroupMemberModel.user_id == user.id)
        )
    ).all()
    principals = [("user", user.id)] + [("group", gid) for gid, _ in group_rows]
    member_rows = (
        await session.execute(
            select(ProjectModel.name, ProjectMemberModel.role)
            .join(ProjectMemberModel, ProjectMemberModel.project_id == ProjectModel.id)
            .where(
                ProjectMemberModel.principal_id.in_([pid for _, pid in principals]),
            )
        )
    ).all()
    projects: dict[str, Role] = {}
    for name, role_value in member_rows:
        role = Role(role_value)
        if name not in projects or role.rank > projects[name].rank:
            projects[name] = role
    return Identity(
        user_id=user.id,
        name=user.name,
        is_admin=user.is_admin and Scope.ADMIN in scopes,
        scopes=scopes,
        groups=frozenset(name for _, name in group_rows),
        projects=projects,
        auth_method=auth_method,
        is_service_account=user.is_service_account,
    )
