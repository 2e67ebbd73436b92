"""`flo apply|list|get|export` (recipes) and the job commands `flo start|stop|restart|
delete|runs|logs|describe|schedule NAME` (runs and their logs). Registered on the main
app by `register(app)` from `cli/main.py`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml

from flotilla.cli.output import (
    api_errors,
    client,
    fail,
    fail_problems,
    print_json,
    print_yaml,
    table,
)
from flotilla.client import FlotillaClient
from flotilla.errors import InvalidRecipe
from flotilla.recipes import parse_recipe
from flotilla.recipes.envelope import load_documents

JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]
TypeOpt = Annotated[str, typer.Option("--type", "-t", help="recipe type")]


def register(app: typer.Typer) -> None:
    app.command("apply")(apply)
    app.command("list")(list_)
    app.command("get")(get)
    app.command("start")(start)
    app.command("stop")(stop)
    app.command("restart")(restart)
    app.command("delete")(delete)
    app.command("runs")(runs)
    app.command("logs")(logs)
    app.command("describe")(describe)
    app.command("export")(export)
    app.command("schedule")(schedule)


@api_errors
def apply(
    file: Annotated[Path | None, typer.Argument(help="YAML or JSON recipe ('-' for stdin)")] = None,
    file_option: Annotated[
        Path | None, typer.Option("--file", "-f", help="the same, kubectl-style")
    ] = None,
    start: Annotated[bool, typer.Option("--start", help="start a run after applying")] = False,
) -> None:
    """Create or update resources from a recipe file (several YAML documents allowed)."""
    file = file or file_option
    if file is None:
        fail("give a recipe file: flo apply FILE (or -f FILE; '-' reads stdin)")
    text = sys.stdin.read() if str(file) == "-" else _read(file)
    try:
        documents = load_documents(text)  # bad YAML, or nested too deeply to read
    except InvalidRecipe as e:
        fail_problems(str(file), e.problems)
    with client() as api:
        for document in documents:
            try:
                parse_recipe(document)  # the same validation the server does, offline
            except InvalidRecipe as e:
                fail_problems(str(file), e.problems)
            result = api.apply(document)
            kind, name = result["type"], result["spec"]["name"]
            print(f"applied {kind} {name} (version {result['state']['version']})")
            if start:
                run = api.start(name)["run"]
                print(f"started {kind} {name} run {run['number']} ({run['id']})")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")


@api_errors
def list_(
    recipe_type: Annotated[str | None, typer.Argument(help="job, ...")] = None,
    json: JsonOpt = False,
) -> None:
    """List resources and their status."""
    with client() as api:
        recipes = api.list_recipes(
            recipe_type if recipe_type not in (None, "all", "resources") else None
        )
    if json:
        return print_json(recipes)
    rows = [
        (
            r["type"],
            r["spec"]["name"],
            r["spec"].get("owner"),
            r["state"]["status"],
            (r["state"].get("last_run") or {}).get("status", ""),
            r["spec"].get("schedule") or "",
            r["state"]["id"],
        )
        for r in recipes
    ]
    table(None, ["type", "name", "owner", "status", "last run", "schedule", "id"], rows)


@api_errors
def get(name: str, recipe_type: TypeOpt = "job", json: JsonOpt = False) -> None:
    """Show one resource: its recipe and state."""
    with client() as api:
        recipe = api.get_recipe(recipe_type, name)
    print_json(recipe) if json else print_yaml(recipe)


@api_errors
def start(
    name: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="stream the run's logs")] = False,
) -> None:
    """Start a run of a job; returns once it is queued."""
    with client() as api:
        run = api.start(name)["run"]
        print(f"started job {name} run {run['number']} ({run['id']})")
        if follow:
            _follow(api, run["id"], 0)


@api_errors
def stop(name: str) -> None:
    """Stop every active run of a job (SIGTERM, then SIGKILL after the grace period)."""
    with client() as api:
        result = api.stop(name)
    print(f"stopping {result.get('stopped_runs', 0)} run(s) of job {name}")


@api_errors
def restart(name: str) -> None:
    """Stop the job's active runs and start a new one."""
    with client() as api:
        run = api.restart(name)["run"]
    print(f"restarted job {name}: run {run['number']} ({run['id']})")


@api_errors
def delete(
    name: str, yes: Annotated[bool, typer.Option("--yes", "-y", help="don't ask")] = False
) -> None:
    """Delete a job (its active runs are stopped; run history and logs are kept)."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete job {name}?"):
        raise typer.Exit(1)
    with client() as api:
        api.delete(name)
    print(f"deleted job {name}")


@api_errors
def runs(name: str, json: JsonOpt = False, limit: int = 20) -> None:
    """A job's runs, newest first."""
    with client() as api:
        items = api.runs(name, limit)
    if json:
        return print_json(items)
    rows = [
        (
            r["number"],
            r["status"],
            r["reason"],
            r["exit_code"],
            r["trigger"],
            r["queued_at"],
            r["started_at"],
            r["finished_at"],
            r["id"],
        )
        for r in items
    ]
    table(
        f"runs of {name}",
        ["#", "status", "reason", "exit", "trigger", "queued", "started", "finished", "id"],
        rows,
    )


@api_errors
def logs(
    name: str,
    run: Annotated[int | None, typer.Argument(help="run number (default: latest)")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream until the run ends")
    ] = False,
    rank: Annotated[int, typer.Option(help="which task of a multi-node run")] = 0,
    setup: Annotated[
        bool, typer.Option("--setup", help="clone / start-script output instead")
    ] = False,
) -> None:
    """Print a run's logs (the latest run unless a number is given)."""
    with client() as api:
        items = api.runs(name, 1000)
        chosen = [r for r in items if run is None or r["number"] == run]
        if not chosen:
            fail(f"job {name} has no run {run}" if run else f"job {name} has no runs yet")
        run_id = chosen[0]["id"]
        if follow:
            _follow(api, run_id, rank)
        else:
            sys.stdout.write(api.logs(run_id, rank, "setup" if setup else "main"))


def _follow(api: FlotillaClient, run_id: str, rank: int) -> None:
    for chunk in api.follow_logs(run_id, rank):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    final = api.run(run_id)
    print(f"--- run {final['number']} {final['status']}: {final['reason']}", file=sys.stderr)
    if final["status"] != "succeeded":
        raise typer.Exit(1)


@api_errors
def describe(name: str, run: Annotated[int | None, typer.Argument()] = None) -> None:
    """A run's tasks and events (why is it pending? where did it run?)."""
    with client() as api:
        items = api.runs(name, 1000)
        chosen = [r for r in items if run is None or r["number"] == run]
        if not chosen:
            fail(f"job {name} has no matching run")
        detail = chosen[0]
        events = api.run_events(detail["id"])
    print(f"run {detail['number']} of {name}: {detail['status']} ({detail['reason']})")
    table(
        "tasks",
        ["rank", "name", "status", "node", "gpus", "pid", "exit"],
        [
            (
                t["rank"],
                t["name"],
                t["status"],
                t["node"],
                ",".join(map(str, t["gpus"])),
                t["pid"],
                t["exit_code"],
            )
            for t in detail["tasks"]
        ],
    )
    table(
        "events",
        ["time", "kind", "message", "by"],
        [(e["time"], e["kind"], e["message"], e["actor"]) for e in events],
    )


@api_errors
def export(
    names: Annotated[list[str] | None, typer.Argument(help="names (default: all)")] = None,
    recipe_type: TypeOpt = "job",
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Write recipes back out as YAML, ready for `flo apply`."""
    with client() as api:
        recipes = [api.get_recipe(recipe_type, n) for n in names] if names else api.list_recipes()
    documents = [{k: r[k] for k in ("schema_version", "type", "spec")} for r in recipes]
    text = yaml.safe_dump_all(documents, sort_keys=False)
    if output:
        output.write_text(text)
        print(f"wrote {len(documents)} recipe(s) to {output}")
    else:
        sys.stdout.write(text)


@api_errors
def schedule(
    name: str,
    cron: Annotated[str | None, typer.Argument(help="new schedule, e.g. '0 * * * *'")] = None,
    disable: Annotated[bool, typer.Option("--disable", help="stop scheduling")] = False,
) -> None:
    """Enable (optionally with a new cron schedule) or disable a job's schedule."""
    with client() as api:
        result = api.schedule(name, cron, enable=not disable)
    state = result["state"]
    print(
        f"{'unscheduled' if disable else 'scheduled'} job {name}"
        + (f"; next run at {state['next_scheduled_at']}" if state.get("next_scheduled_at") else "")
    )
