"""`flo`: the main app. It holds `flo server` (run the server) and `flo secret`;
every other command group lives in its own module and is added by its `register(app)`
below (recipes and jobs in `cli/jobs.py`)."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer

from flotilla.cli.agents import register as register_agents
from flotilla.cli.audit import register as register_audit
from flotilla.cli.fleets import register as register_fleets
from flotilla.cli.groups import register as register_groups
from flotilla.cli.jobs import register as register_jobs
from flotilla.cli.login import register as register_login
from flotilla.cli.nodes import register as register_nodes
from flotilla.cli.output import JsonOpt, api_errors, client, print_json, table
from flotilla.cli.projects import register as register_projects
from flotilla.cli.queue import register as register_queue
from flotilla.cli.serving import register as register_serving
from flotilla.cli.simulate import simulate_command, trace_command
from flotilla.cli.ssh import register as register_ssh
from flotilla.cli.tokens import register as register_tokens
from flotilla.cli.usage import register as register_usage
from flotilla.cli.users import register as register_users

app = typer.Typer(
    help="Flotilla: a control plane for GPU compute.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
secret_app = typer.Typer(help="Manage secrets attached to recipes.", no_args_is_help=True)
app.add_typer(secret_app, name="secret")


@app.command()
def server(
    host: Annotated[str | None, typer.Option(help="address to listen on [FLOTILLA_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [FLOTILLA_PORT, default 8765]")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="state directory [FLOTILLA_DATA_DIR]")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL [FLOTILLA_DATABASE_URL]")
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(help="declared local GPUs, e.g. H100:8 [FLOTILLA_LOCAL_GPUS]")
    ] = None,
) -> None:
    """Run the Flotilla server (API, scheduler, supervisor) in the foreground."""
    from flotilla.server.serve import serve

    serve(host=host, port=port, data_dir=data_dir, database_url=database_url, local_gpus=gpus)


OwnerOpt = Annotated[str | None, typer.Option(help="a user, group or project (default: you)")]
OwnerKindOpt = Annotated[
    str | None, typer.Option(help="user, group or project (default: inferred from --owner)")
]


@secret_app.command("set")
@api_errors
def secret_set(
    name: str,
    value: Annotated[str | None, typer.Option(help="the value (default: read from stdin)")] = None,
    description: str = "",
    owner: OwnerOpt = None,
    owner_kind: OwnerKindOpt = None,
) -> None:
    """Create or replace a secret. Prefer stdin: command lines end up in shell history."""
    text = value if value is not None else sys.stdin.read().rstrip("\n")
    with client() as api:
        saved = api.put_secret(name, text, description, owner, owner_kind)
    print(f"secret {name} saved for the {saved.owner_kind} {saved.owner}")


@secret_app.command("list")
@api_errors
def secret_list(json: JsonOpt = False, owner: OwnerOpt = None) -> None:
    """The secrets you may use: yours, your groups', your projects'. Never values."""
    with client() as api:
        items = api.list_secrets(owner)
    if json:
        return print_json(items)
    table(
        None,
        ["name", "owner", "kind", "description", "updated"],
        [(s.name, s.owner, s.owner_kind, s.description, s.updated_at) for s in items],
    )


@secret_app.command("delete")
@api_errors
def secret_delete(name: str, owner: OwnerOpt = None, owner_kind: OwnerKindOpt = None) -> None:
    with client() as api:
        api.delete_secret(name, owner, owner_kind)
    print(f"secret {name} deleted")


register_jobs(app)  # flo apply|list|get|start|stop|restart|delete|runs|logs|describe|...
app.command("simulate")(simulate_command)
app.command("trace")(trace_command)
register_login(app)  # flo login, flo logout, flo auth rotate-keys|sessions
register_fleets(app)  # flo offer, flo fleets, flo fleet describe|delete
register_nodes(app)  # flo nodes, flo node describe|cordon|uncordon|drain|terminate
register_queue(app)  # flo queue, flo policy
register_audit(app)  # flo audit
register_usage(app)  # flo usage, flo budget set|list|delete
register_users(app)  # flo user ..., flo service-account create|list
register_groups(app)  # flo group create|list|show|delete|add-member|remove-member
register_projects(app)  # flo project create|list|show|delete|add-member|remove-member
register_tokens(app)  # flo token create|list|revoke
register_serving(app)  # flo lb list|describe|delete|serve, flo deployments, flo deployment ...
register_ssh(app)  # flo ssh TARGET
register_agents(app)  # flo agent token create|join|serve|list


# `flo --help` lists its commands under these headings, in this order.
PANELS = {
    "Jobs and runs": (
        "apply list get start stop restart delete runs logs describe export schedule ssh"
    ),
    "Serving": "deployments deployment lb",
    "Capacity": "offer fleets fleet nodes node queue policy agent",
    "People and access": (
        "login logout auth user service-account group project token secret audit"
    ),
    "Costs": "usage budget",
    "Server and tools": "server simulate trace",
}


def _group_commands(typer_app: typer.Typer) -> None:
    panel_of = {name: panel for panel, names in PANELS.items() for name in names.split()}
    order = list(PANELS)
    for command in typer_app.registered_commands:
        name = str(command.name or getattr(command.callback, "__name__", ""))
        command.rich_help_panel = panel_of.get(name, "Other")
    for group in typer_app.registered_groups:
        group.rich_help_panel = panel_of.get(group.name or "", "Other")
    # Help shows the panels in the order they first appear: PANELS' order.
    typer_app.registered_commands.sort(key=lambda c: _rank(order, c.rich_help_panel))
    typer_app.registered_groups.sort(key=lambda g: _rank(order, g.rich_help_panel))


def _rank(order: list[str], panel: object) -> int:
    return order.index(str(panel)) if panel in order else len(order)


def _version(show: bool) -> None:
    if show:
        try:
            number = version("flotilla")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown"
        print(f"flo (Flotilla) {number}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            metavar="",
            callback=_version,
            is_eager=True,
            help="print the version",
        ),
    ] = False,
) -> None:
    """Flotilla: a control plane for GPU compute."""


_group_commands(app)


def main() -> None:
    app()
