"""`flo nodes` (list), `flo node describe|cordon|uncordon|drain|terminate NAME` and
`flo node trust NAME` (whose work a node that cannot isolate runs). Registered on
the main app by `register(app)` from `cli/main.py`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from flotilla.api.nodes import Node
from flotilla.cli.output import JsonOpt, WatchOpt, WideOpt, connected, print_json, table, when
from flotilla.cli.progress import watch
from flotilla.core.status import NodeState

node_app = typer.Typer(
    help="Inspect one node, or cordon, uncordon, drain or terminate it.", no_args_is_help=True
)

NameArg = Annotated[str, typer.Argument(help="node name (see `flo nodes`)")]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", "-r", help="why; recorded in the node's events")
]

# The label a node's trust list lives in (`{"users": [...], "groups": [...], "ids": [...]}`):
# `describe` shows it as `trusted`, not among the other labels.
TRUST_LABEL = "trusted"


def register(app: typer.Typer) -> None:
    app.command("nodes")(nodes_command)
    app.add_typer(node_app, name="node")


def nodes_command(
    state: Annotated[NodeState | None, typer.Option(help="only nodes in this state")] = None,
    fleet: Annotated[str | None, typer.Option(help="only nodes of this fleet")] = None,
    gpu: Annotated[str | None, typer.Option("--gpu", help="only this GPU type, e.g. H100")] = None,
    json: JsonOpt = False,
    wide: WideOpt = False,
    watching: WatchOpt = False,
) -> None:
    """List nodes: GPUs free, state, price and age (terminated ones with --state)."""
    watch(lambda: _nodes(state, fleet, gpu, json, wide), watching)


def _nodes(
    state: NodeState | None, fleet: str | None, gpu: str | None, json: bool, wide: bool
) -> None:
    with connected() as api:
        items = api.list_nodes(state.value if state else None, fleet, gpu)
    if json:
        return print_json(items)
    rows = [
        (
            n.name,
            n.provider,
            n.instance_type,
            gpu_summary(n),
            n.state,
            n.reason,
            price(n.price_per_hour),
            age(n.age_seconds),
        )
        for n in items
    ]
    columns = ["name", "provider", "instance type", "GPUs", "state", "reason", "$/h", "age"]
    table(None, columns, rows, wide)


@node_app.command("describe")
def describe(name: NameArg, json: JsonOpt = False) -> None:
    """A node's GPUs and who holds them, its topology labels and its events."""
    with connected() as api:
        node = api.get_node(name)
    if json:
        return print_json(node)
    print(state_line(node))
    facts = [
        ("provider", node.provider),
        ("fleet", node.fleet),
        ("instance", f"{node.instance_type} in {node.region}" + (" (spot)" if node.spot else "")),
        ("address", node.address),
        ("GPUs", gpu_summary(node)),
        ("price", price(node.price_per_hour) + "/h" if node.price_per_hour else "-"),
        ("age", age(node.age_seconds)),
        ("interruption deadline", node.interruption_deadline),
        ("isolation", node.labels.get("isolation")),
        ("trusted", trust_summary(node)),
    ]
    for label, value in facts:
        if value:
            print(f"  {label}: {value}")
    table(
        "GPUs",
        ["index", "type", "healthy", "run", "job", "task"],
        [
            (
                g.index,
                g.type,
                "yes" if g.healthy else "NO",
                *((g.holder.run_id, g.holder.job, g.holder.task) if g.holder else ("", "", "")),
            )
            for g in node.gpus
        ],
    )
    labels = {k: v for k, v in node.labels.items() if k != TRUST_LABEL}
    table("labels", ["label", "value"], sorted(labels.items()))
    table(
        "events",
        ["time", "message", "by"],
        [(when(e.time), e.message, e.actor) for e in node.events],
    )


def _act(name: str, action: str, reason: str | None) -> None:
    with connected() as api:
        node = api.node_action(name, action, reason)
    print(state_line(node))


def state_line(node: Node) -> str:
    """`node gpu-1: cordoned (bad fan)`."""
    return f"node {node.name}: {node.state}" + (f" ({node.reason})" if node.reason else "")


@node_app.command("cordon")
def cordon(name: NameArg, reason: ReasonOpt = None) -> None:
    """No new work on the node; what runs there keeps running."""
    _act(name, "cordon", reason)


@node_app.command("uncordon")
def uncordon(name: NameArg, reason: ReasonOpt = None) -> None:
    """Let the node take new work again (from cordoned or draining)."""
    _act(name, "uncordon", reason)


@node_app.command("drain")
def drain(name: NameArg, reason: ReasonOpt = None) -> None:
    """Stop the node's runs (SIGTERM, grace period) and requeue them; it ends cordoned."""
    _act(name, "drain", reason)


@node_app.command("terminate")
def terminate(
    name: NameArg,
    reason: ReasonOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="don't ask", metavar="")] = False,
) -> None:
    """Release the node's instance at its provider; its runs are requeued elsewhere."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"terminate node {name}?"):
        raise typer.Exit(1)
    _act(name, "terminate", reason)


@node_app.command("trust")
def trust(
    name: NameArg,
    user: Annotated[
        list[str] | None, typer.Option("--user", "-u", help="a user (repeatable)")
    ] = None,
    group: Annotated[
        list[str] | None, typer.Option("--group", "-g", help="a group (repeatable)")
    ] = None,
    remove: Annotated[
        bool, typer.Option("--remove", help="stop trusting them instead", metavar="")
    ] = False,
    replace: Annotated[
        bool, typer.Option("--replace", help="trust exactly these (none given: nobody)", metavar="")
    ] = False,
) -> None:
    """Let these users and groups' members run work on a node that cannot isolate
    tasks (its isolation is not `full`: their tasks run as the node agent's user).
    Admins' work always runs there."""
    users, groups = list(user or []), list(group or [])
    with connected() as api:
        if not replace:
            before_users, before_groups = trusted(api.get_node(name))
            if remove:
                users = [u for u in before_users if u not in users]
                groups = [g for g in before_groups if g not in groups]
            else:
                users, groups = [*before_users, *users], [*before_groups, *groups]
        node = api.set_node_trust(name, sorted(set(users)), sorted(set(groups)))
    print(f"node {node.name}: trusted {trust_summary(node) or 'nobody'}")
    isolation = node.labels.get("isolation")
    if isolation == "full":
        print("  (it isolates tasks: everyone's work runs there, trusted or not)")
    elif isolation:
        print(f"  isolation: {isolation}")


def trusted(node: Node) -> tuple[list[str], list[str]]:
    """The users and the groups the node's `trusted` label names. Labels are
    free-form JSON, so anything but lists of names there reads as nobody."""
    label = node.labels.get(TRUST_LABEL)
    if not isinstance(label, dict):
        return [], []
    return _names(label.get("users")), _names(label.get("groups"))


def _names(value: object) -> list[str]:
    return [str(name) for name in value] if isinstance(value, list) else []


def trust_summary(node: Node) -> str:
    """`users alice, bob; groups ml`; empty when nobody is trusted."""
    users, groups = trusted(node)
    kinds = (("users", users), ("groups", groups))
    return "; ".join(f"{kind} {', '.join(names)}" for kind, names in kinds if names)


def gpu_summary(node: Node) -> str:
    """`6/8 free H100`, with unhealthy GPUs called out; `-` for a CPU node."""
    counts = node.gpu_counts
    if not counts.total:
        return "-"
    text = f"{counts.free}/{counts.total} free"
    if node.gpu_type:
        text += f" {node.gpu_type}"
    if counts.unhealthy:
        text += f", {counts.unhealthy} unhealthy"
    return text


def price(per_hour: float | None) -> str:
    return f"${per_hour:,.2f}" if per_hour else "-"


def age(seconds: int) -> str:
    """`42s`, `7m`, `3h05m`, `4d2h`: two units at most, as an admin scans it."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600}h"
