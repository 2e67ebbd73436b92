"""`flo project create|list|show|delete|add-member|remove-member`. Registered on
the main app by `register(app)` from `cli/main.py`."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from flotilla.cli.output import connected, print_json, table

project_app = typer.Typer(help="Manage projects and their members' roles.", no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table", metavar="")]
ProjectArg = Annotated[str, typer.Argument(help="project name or id")]
MemberArg = Annotated[str, typer.Argument(help="a user name (a group's with --group)")]
GroupOpt = Annotated[bool, typer.Option("--group", "-g", help="the member is a group", metavar="")]


class RoleChoice(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"


def register(app: typer.Typer) -> None:
    app.add_typer(project_app, name="project")


@project_app.command("create")
def create(
    name: str, description: Annotated[str, typer.Option(help="what the project is")] = ""
) -> None:
    """Create a project (platform admins); add members with `flo project add-member`."""
    with connected() as api:
        project = api.create_project(name, description)
    print(f"created project {project.name} ({project.id})")


@project_app.command("list")
def list_(json: JsonOpt = False) -> None:
    """Projects you hold a role in (all, for admins)."""
    with connected() as api:
        projects = api.list_projects()
    if json:
        return print_json(projects)
    rows = [(p.name, p.description, len(p.members)) for p in projects]
    table(None, ["name", "description", "members"], rows)


@project_app.command("show")
def show(project: ProjectArg, json: JsonOpt = False) -> None:
    """A project and its members' roles."""
    with connected() as api:
        found = api.get_project(project)
    if json:
        return print_json(found)
    print(f"project {found.name}" + (f": {found.description}" if found.description else ""))
    rows = [(m.name, m.kind, m.role) for m in found.members]
    table("members", ["name", "kind", "role"], rows)


@project_app.command("delete")
def delete(
    project: ProjectArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="don't ask", metavar="")] = False,
) -> None:
    """Delete a project (refused while live recipes are in it)."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete project {project}?"):
        raise typer.Exit(1)
    with connected() as api:
        api.delete_project(project)
    print(f"deleted project {project}")


@project_app.command("add-member")
def add_member(
    project: ProjectArg,
    name: MemberArg,
    role: Annotated[RoleChoice, typer.Option("--role", "-r", help="the member's role")] = (
        RoleChoice.MEMBER
    ),
    group: GroupOpt = False,
) -> None:
    """Give a user or group a role in a project (its admins, or platform admins);
    run again to change the role."""
    kind = "group" if group else "user"
    with connected() as api:
        api.set_project_member(project, kind, name, role.value)
    print(f"{kind} {name} is {role.value} of project {project}")


@project_app.command("remove-member")
def remove_member(project: ProjectArg, name: MemberArg, group: GroupOpt = False) -> None:
    kind = "group" if group else "user"
    with connected() as api:
        api.remove_project_member(project, kind, name)
    print(f"removed {kind} {name} from project {project}")
