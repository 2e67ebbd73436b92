"""`flo offer` (what providers could create, with prices), `flo fleets` (list) and
`flo fleet describe|delete NAME`. Fleets are created with `flo apply` like any
recipe. Registered on the main app by `register(app)` from `cli/main.py`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from flotilla.api.fleets import Fleet
from flotilla.cli.output import JsonOpt, WideOpt, connected, console, print_json, table, when

fleet_app = typer.Typer(help="Describe or delete one fleet.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="fleet name (see `flo fleets`)")]


def register(app: typer.Typer) -> None:
    app.command("offer")(offer_command)
    app.command("fleets")(fleets_command)
    app.add_typer(fleet_app, name="fleet")


def offer_command(
    gpu: Annotated[
        str | None, typer.Option("--gpu", help="GPU type and count per instance: H100:8, H100")
    ] = None,
    region: Annotated[str | None, typer.Option(help="only this region")] = None,
    spot: Annotated[
        bool, typer.Option("--spot", help="only offers with a spot price", metavar="")
    ] = False,
    json: JsonOpt = False,
) -> None:
    """Instance types the providers offer: GPUs, region, $/h on demand and spot, and
    how many could be created now."""
    with connected() as api:
        items = api.offers(gpu, region, spot)
    if json:
        return print_json(items)
    # Instance types and regions are what a fleet recipe needs: never cut them short.
    # The provider is in --json; `local` is the only other one and says what it is.
    # Short price headers keep the widest catalog row inside 80 columns.
    t = Table(header_style="bold", caption="prices in $ per hour")
    t.add_column("instance type", no_wrap=True)
    t.add_column("GPUs", no_wrap=True)
    t.add_column("region", no_wrap=True)
    for column in ("on-demand", "spot", "free"):
        t.add_column(column, justify="right", no_wrap=True)
    for o in items:
        t.add_row(
            o.instance_type,
            f"{o.gpus}x {o.gpu_type}",
            o.region,
            price(o.on_demand_per_hour, o.price_published),
            price(o.spot_per_hour, o.price_published) if o.spot_per_hour else "-",
            str(o.available),
        )
    console.print(t)
    if any(not o.price_published for o in items):
        print("* simulated price, not a published one")


def fleets_command(json: JsonOpt = False, wide: WideOpt = False) -> None:
    """List fleets: size, desired size, status and why a fleet waits, $/h."""
    with connected() as api:
        items = api.list_fleets()
    if json:
        return print_json(items)
    # Regions and nodes are in `flo fleet describe`, and why a fleet waits follows
    # the table in full rather than wrapped in a cell.
    rows = [
        (
            f.name,
            f.instance_type,
            f.nodes,
            f"{_up(f)}/{f.desired}",  # ready of desired
            f.status,
            price(f.price_per_hour),
        )
        for f in items
    ]
    table(None, ["name", "instance type", "nodes", "ready", "status", "$/h"], rows, wide)
    for f in items:
        if f.reason:
            print(f"{f.name}: {f.reason}")


@fleet_app.command("describe")
def describe(name: NameArg, json: JsonOpt = False) -> None:
    """A fleet's settings, sizes and nodes."""
    with connected() as api:
        fleet = api.get_fleet(name)
    if json:
        return print_json(fleet)
    print(f"fleet {fleet.name}: {fleet.status}" + (f" ({fleet.reason})" if fleet.reason else ""))
    print(
        f"{fleet.provider} {fleet.instance_type} in {fleet.region}, nodes {fleet.nodes}"
        f" ({fleet.placement}{', spot' if fleet.spot else ''}), spares {fleet.spares},"
        f" idle timeout {fleet.idle_timeout}; desired {fleet.desired},"
        f" {price(fleet.price_per_hour)} $/h"
    )
    rows = [
        (
            n.name,
            n.state,
            "yes" if n.busy else "",
            when(n.idle_since),
            price(n.price_per_hour),
            n.reason,
        )
        for n in fleet.members
    ]
    table("nodes", ["name", "state", "busy", "idle since", "$/h", "reason"], rows)


@fleet_app.command("delete")
def delete(
    name: NameArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="don't ask", metavar="")] = False,
) -> None:
    """Delete a fleet: idle nodes are terminated, busy ones drained first."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete fleet {name}?"):
        raise typer.Exit(1)
    with connected() as api:
        api.delete_fleet(name)
    print(f"deleted fleet {name}; its nodes are being released")


def _up(fleet: Fleet) -> int:
    return fleet.nodes_by_state.get("ready", 0)


def price(value: float | None, published: bool = True) -> str:
    if value is None:
        return ""
    return f"{value:.2f}" + ("" if published else "*")
