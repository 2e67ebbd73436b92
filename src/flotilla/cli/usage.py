"""`flo usage` (GPU-hours and cost grouped by user, group, project, resource or day)
and `flo budget set|list|delete` (monthly dollar and GPU-hour limits, GPUs at once).
Registered on the main app by `register(app)` from `cli/main.py`."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.table import Table

from flotilla.api.budgets import Budget, LimitName, LimitState
from flotilla.api.usage import UsageFigures, UsageKeys
from flotilla.cli.output import JsonOpt, connected, console, fail, print_json
from flotilla.client import ApiError, FlotillaClient

budget_app = typer.Typer(help="Spending limits per project, user or group.", no_args_is_help=True)

FIGURES = ("gpu_hours", "node_hours", "cost", "spot_cost", "runs")
# The column of each `--by` key: the row field it is grouped by.
KEY_COLUMNS = {
    "user": "user",
    "group": "group",
    "project": "project",
    "resource": "instance_type",
    "day": "day",
}
LIMIT_FIELDS = ("dollars_per_month", "gpu_hours_per_month", "max_gpus", "warn_fraction")


def register(app: typer.Typer) -> None:
    app.command("usage")(usage_command)
    app.add_typer(budget_app, name="budget")


def usage_command(
    by: Annotated[
        str, typer.Option(help="user, group, project, resource or day; combine: project,day")
    ] = "user",
    since: Annotated[
        str | None, typer.Option(help="ISO date or time (default: start of this month, UTC)")
    ] = None,
    until: Annotated[str | None, typer.Option(help="ISO date or time, exclusive")] = None,
    csv: Annotated[
        bool, typer.Option("--csv", help="print CSV (one header row)", metavar="")
    ] = False,
    idle: Annotated[
        bool, typer.Option(help="include fleet nodes' idle time (user idle:FLEET)", metavar="")
    ] = True,
    json: JsonOpt = False,
) -> None:
    """GPU-hours, node-hours and dollars, billed per second, grouped by `--by`."""
    with connected() as api:
        if csv:
            sys.stdout.write(api.usage_csv(by, since, until, idle))
            return
        report = api.usage(by, since, until, idle)
    if json:
        return print_json(report)
    t = Table(
        header_style="bold",
        caption=f"{report.since} to {report.until}; $ billed per second",
    )
    for key in report.by:
        t.add_column(KEY_COLUMNS.get(key, key).replace("_", " "))
    for figure in FIGURES:
        t.add_column(figure.replace("_", " "), justify="right")
    for row in report.rows:
        t.add_row(*[_key(_key_value(row, k)) for k in report.by], *_figures(row))
    t.add_section()
    t.add_row("total", *[""] * (len(report.by) - 1), *_figures(report.total), style="bold")
    console.print(t)


def _key_value(row: UsageKeys, key: str) -> str | None:
    """The value a row is grouped by for the `--by` key `key`."""
    values = {
        "user": row.user,
        "group": row.group,
        "project": row.project,
        "resource": row.instance_type,
        "day": row.day,
    }
    return values.get(key)


def _key(value: str | None) -> str:
    return "-" if value is None else value


def _figures(row: UsageFigures) -> list[str]:
    return [
        f"{row.gpu_hours:,.2f}",
        f"{row.node_hours:,.2f}",
        f"${row.cost:,.2f}",
        f"${row.spot_cost:,.2f}",
        str(row.runs),
    ]


def _scope(project: str | None, user: str | None, group: str | None) -> tuple[str, str]:
    given = [(k, v) for k, v in (("project", project), ("user", user), ("group", group)) if v]
    if len(given) != 1:
        fail("name exactly one of --project, --user, --group")
    return given[0]


ProjectOpt = Annotated[str | None, typer.Option(help="the project's budget")]
UserOpt = Annotated[str | None, typer.Option(help="the user's budget")]
GroupOpt = Annotated[str | None, typer.Option(help="the group's budget")]


@budget_app.command("set")
def budget_set(
    project: ProjectOpt = None,
    user: UserOpt = None,
    group: GroupOpt = None,
    dollars_per_month: Annotated[float | None, typer.Option(min=0)] = None,
    gpu_hours_per_month: Annotated[float | None, typer.Option(min=0)] = None,
    max_gpus: Annotated[
        int | None, typer.Option(min=0, help="GPUs held at once by running and pending runs")
    ] = None,
    warn_fraction: Annotated[
        float | None, typer.Option(min=0, max=1, help="warn from this fraction (default 0.8)")
    ] = None,
) -> None:
    """Set limits on a budget (admins). Limits not given keep their current value."""
    kind, name = _scope(project, user, group)
    given = {
        "dollars_per_month": dollars_per_month,
        "gpu_hours_per_month": gpu_hours_per_month,
        "max_gpus": max_gpus,
        "warn_fraction": warn_fraction,
    }
    with connected() as api:
        limits = _current_limits(api, kind, name)
        limits.update({k: v for k, v in given.items() if v is not None})
        if limits["warn_fraction"] is None:
            limits.pop("warn_fraction")
        budget = api.put_budget(kind, name, limits)
    print(f"budget for {kind} {name}: {_limits(budget)}")


def _current_limits(api: FlotillaClient, kind: str, name: str) -> dict[str, Any]:
    """The budget's limits now (each None when there is no budget yet), so that a
    `set` of one limit keeps the others."""
    try:
        current = api.get_budget(kind, name)
    except ApiError as e:
        if e.status != 404:
            raise
        return dict.fromkeys(LIMIT_FIELDS)
    now = current.model_dump()
    return {k: now[k] for k in LIMIT_FIELDS}


@budget_app.command("list")
def budget_list(json: JsonOpt = False) -> None:
    """Budgets that apply to you (all of them for admins), with this month's use."""
    with connected() as api:
        items = api.budget_status()
    if json:
        return print_json(items)
    t = Table(header_style="bold")
    for column in ("scope", "limit", "used", "max", "use", "state"):
        t.add_column(column, justify="right" if column in ("used", "max", "use") else "left")
    for budget in items:
        scope = f"{budget.scope_kind} {budget.scope_name}"
        for limit in budget.limits:
            ratio = limit.ratio
            t.add_row(
                scope,
                limit.limit.replace("_", " "),
                _amount(limit.limit, limit.used),
                _amount(limit.limit, limit.max),
                "-" if ratio is None else f"{ratio:.0%}",
                _state(limit.state),
            )
            scope = ""
    console.print(t)


@budget_app.command("delete")
def budget_delete(project: ProjectOpt = None, user: UserOpt = None, group: GroupOpt = None) -> None:
    """Remove a budget (admins)."""
    kind, name = _scope(project, user, group)
    with connected() as api:
        api.delete_budget(kind, name)
    print(f"budget for {kind} {name} deleted")


def _limits(budget: Budget) -> str:
    limits: list[tuple[LimitName, float | None, str]] = [
        ("dollars_per_month", budget.dollars_per_month, "$/month"),
        ("gpu_hours_per_month", budget.gpu_hours_per_month, "GPU-hours/month"),
        ("max_gpus", budget.max_gpus, "GPUs at once"),
    ]
    parts = [f"{label} {_amount(key, value)}" for key, value, label in limits if value is not None]
    parts.append(f"warn at {budget.warn_fraction:.0%}")
    return ", ".join(parts)


def _amount(limit: LimitName, value: float) -> str:
    if limit == "dollars_per_month":
        return f"${value:,.2f}"
    if limit == "max_gpus":
        return f"{value:g}"
    return f"{value:,.2f}"


def _state(state: LimitState) -> str:
    return {"ok": "[green]ok[/green]", "warning": "[yellow]warning[/yellow]"}.get(
        state, "[red]exceeded[/red]"
    )
