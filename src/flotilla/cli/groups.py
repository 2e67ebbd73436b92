"""`flo group create|list|show|delete|add-member|remove-member`. Registered on the
main app by `register(app)` from `cli/main.py`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from flotilla.cli.output import JsonOpt, as_sent, connected, print_json, print_yaml, table

group_app = typer.Typer(help="Manage groups of users.", no_args_is_help=True)

GroupArg = Annotated[str, typer.Argument(help="group name or id")]
UserArg = Annotated[str, typer.Argument(help="user name or id")]


def register(app: typer.Typer) -> None:
    app.add_typer(group_app, name="group")


@group_app.command("create")
def create(
    name: str,
    description: Annotated[str, typer.Option(help="what the group is")] = "",
    member: Annotated[
        list[str] | None, typer.Option("--member", "-m", help="a user name; repeatable")
    ] = None,
) -> None:
    """Create a group (platform admins). Its name is shared with users: a recipe's
    `owner` names either."""
    with connected() as api:
        group = api.create_group(name, description, member or [])
    print(f"created group {group.name} with {len(group.members)} member(s)")


@group_app.command("list")
def list_(json: JsonOpt = False) -> None:
    """Groups you may see: all for admins, else yours and your projects'."""
    with connected() as api:
        groups = api.list_groups()
    if json:
        return print_json(groups)
    rows = [(g.name, g.gid, g.description, ", ".join(g.members)) for g in groups]
    table(None, ["name", "gid", "description", "members"], rows)


@group_app.command("show")
def show(group: GroupArg, json: JsonOpt = False) -> None:
    with connected() as api:
        found = api.get_group(group)
    shown = as_sent(found)
    print_json(shown) if json else print_yaml(shown)


@group_app.command("delete")
def delete(
    group: GroupArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="don't ask", metavar="")] = False,
) -> None:
    """Delete a group (refused while it owns live recipes)."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete group {group}?"):
        raise typer.Exit(1)
    with connected() as api:
        api.delete_group(group)
    print(f"deleted group {group}")


@group_app.command("add-member")
def add_member(group: GroupArg, user: UserArg) -> None:
    with connected() as api:
        found = api.add_group_member(group, user)
    print(f"{user} is in group {found.name} ({len(found.members)} member(s))")


@group_app.command("remove-member")
def remove_member(group: GroupArg, user: UserArg) -> None:
    with connected() as api:
        api.remove_group_member(group, user)
    print(f"removed {user} from group {group}")
