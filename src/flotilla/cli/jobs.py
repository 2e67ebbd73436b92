"""`flo apply|list|get|export` (recipes) and the job commands `flo start|stop|restart|
delete|runs|logs|describe|schedule NAME` (runs and their logs). Registered on the main
app by `register(app)` from `cli/main.py`. A deployment's name given to a job command
is answered with the `flo deployment` command to use instead."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml

from flotilla.api.recipes import Recipe
from flotilla.api.runs import RunSummary
from flotilla.cli.output import (
    JsonOpt,
    WatchOpt,
    WideOpt,
    ago,
    api_errors,
    as_sent,
    client,
    duration,
    err_console,
    fail,
    fail_problems,
    print_json,
    print_yaml,
    short_id,
    table,
)
from flotilla.cli.progress import phase, wait_until_running, watch
from flotilla.client import ApiError, FlotillaClient
from flotilla.core.status import RunStatus
from flotilla.errors import InvalidRecipe
from flotilla.recipes import parse_recipe, recipe_types
from flotilla.recipes.envelope import load_documents

LIST_ALL = (None, "all", "resources")
DEPLOYMENT_COMMANDS = ("logs", "stop", "start", "scale", "restart", "describe", "delete")
DetachOpt = Annotated[
    bool,
    typer.Option("--detach", "-d", help="return once queued; don't wait for it to run", metavar=""),
]
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


@contextmanager
def job_client(name: str, command: str) -> Iterator[FlotillaClient]:
    """A client for `flo COMMAND NAME`: a job's "not found" for a name that is a
    deployment's says which `flo deployment` command to use instead."""
    with client() as api:
        try:
            yield api
        except ApiError as e:
            if e.code != "not_found" or not _is_deployment(api, name):
                raise
            instead = command if command in DEPLOYMENT_COMMANDS else "describe"
            fail(f"{name} is a deployment: use `flo deployment {instead} {name}`")


def _is_deployment(api: FlotillaClient, name: str) -> bool:
    try:
        api.get_deployment(name)
    except ApiError:
        return False
    return True


@api_errors
def apply(
    file: Annotated[Path | None, typer.Argument(help="YAML or JSON recipe ('-' for stdin)")] = None,
    file_option: Annotated[
        Path | None, typer.Option("--file", "-f", help="the same, kubectl-style")
    ] = None,
    start: Annotated[
        bool, typer.Option("--start", help="start a run after applying", metavar="")
    ] = False,
    detach: DetachOpt = False,
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
            kind, name = result.type, result.spec["name"]
            print(f"applied {kind} {name} (version {_state(result)['version']})")
            if start and kind == "job":  # deployments and fleets act on apply
                _started(api, kind, name, api.start(name).run, detach)


def _state(recipe: Recipe) -> dict[str, Any]:
    """A recipe's state (free-form per type). Only a template lacks it, and the CLI
    never asks for one: the `{}` is for the type, not a case that happens."""
    return recipe.state or {}


def _started(
    api: FlotillaClient, kind: str, name: str, queued: RunSummary, detach: bool
) -> RunSummary:
    """Say a run was started. On a terminal (unless --detach), first wait with one
    live status line until it runs or ends, so a run that cannot be placed is not
    called started; scripts (no terminal) get the answer at once, as before."""
    if detach or not err_console.is_terminal:
        print(f"started {kind} {name} run {queued.number} ({queued.id})")
        return queued
    try:
        run = wait_until_running(api, queued.id)
    except KeyboardInterrupt:
        print(f"queued {kind} {name} run {queued.number} ({queued.id}); see `flo queue`")
        raise typer.Exit(130) from None
    if run.status is not RunStatus.RUNNING:  # it ended before we saw it run
        print(f"{kind} {name} run {run.number} ({run.id}) {phase(run)}: {run.reason}")
        return run
    where = ", ".join(sorted({t.node for t in run.tasks if t.node}))
    print(f"started {kind} {name} run {run.number} ({run.id})" + (f" on {where}" if where else ""))
    return run


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror}")


@api_errors
def list_(
    what: Annotated[
        str | None, typer.Argument(help="a recipe type (job, deployment, fleet, ...) or a name")
    ] = None,
    json: JsonOpt = False,
    wide: WideOpt = False,
    watching: WatchOpt = False,
) -> None:
    """List resources and their status (of one type, or those with one name)."""
    watch(lambda: _list(what, json, wide), watching)


def _list(what: str | None, json: bool, wide: bool) -> None:
    if what and what.endswith("s") and what[:-1] in recipe_types():
        what = what[:-1]  # `flo list jobs` as `flo list job`
    by_type = what in LIST_ALL or what in recipe_types()
    with client() as api:
        recipes = api.list_recipes(None if what in LIST_ALL or not by_type else what)
    if not by_type:
        recipes = [r for r in recipes if r.spec["name"] == what]
        if not recipes:
            fail(
                f"nothing is named {what!r}",
                f"give a name from `flo list` or a type: {', '.join(recipe_types())}",
            )
    if json:
        return print_json(recipes)
    rows = [
        (
            r.type,
            r.spec["name"],
            r.spec.get("owner"),
            _state(r)["status"],
            (_state(r).get("last_run") or {}).get("status", ""),
            r.spec.get("schedule") or "",
            short_id(_state(r)["id"], wide),
        )
        for r in recipes
    ]
    table(None, ["type", "name", "owner", "status", "last run", "schedule", "id"], rows, wide)


@api_errors
def get(name: str, recipe_type: TypeOpt = "job", json: JsonOpt = False) -> None:
    """Show one resource: its recipe and state."""
    with client() as api:
        recipe = as_sent(api.get_recipe(recipe_type, name))
    print_json(recipe) if json else print_yaml(recipe)


@api_errors
def start(
    name: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream the run's logs", metavar="")
    ] = False,
    detach: DetachOpt = False,
) -> None:
    """Start a run of a job; on a terminal, waits with a status line until it runs."""
    with job_client(name, "start") as api:
        run = _started(api, "job", name, api.start(name).run, detach or follow)
        if follow:
            _follow(api, run.id, 0)


@api_errors
def stop(name: str) -> None:
    """Stop every active run of a job (SIGTERM, then SIGKILL after the grace period)."""
    with job_client(name, "stop") as api:
        result = api.stop(name)
    print(f"stopping {result.stopped_runs} run(s) of job {name}")


@api_errors
def restart(name: str) -> None:
    """Stop the job's active runs and start a new one."""
    with job_client(name, "restart") as api:
        run = api.restart(name).run
    print(f"restarted job {name}: run {run.number} ({run.id})")


@api_errors
def delete(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="don't ask", metavar="")] = False,
) -> None:
    """Delete a job (its active runs are stopped; run history and logs are kept)."""
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete job {name}?"):
        raise typer.Exit(1)
    with client() as api:
        api.delete(name)
    print(f"deleted job {name}")


@api_errors
def runs(
    name: str,
    json: JsonOpt = False,
    limit: int = 20,
    wide: WideOpt = False,
    watching: WatchOpt = False,
) -> None:
    """A job's runs, newest first."""
    watch(lambda: _runs(name, json, limit, wide), watching)


def _runs(name: str, json: bool, limit: int, wide: bool) -> None:
    with job_client(name, "runs") as api:
        items = api.runs(name, limit)
    if json:
        return print_json(items)
    rows = [
        (
            r.number,
            r.status.value,
            r.reason,
            r.exit_code,
            r.trigger,
            ago(r.started_at or r.queued_at, wide),
            duration(r.started_at, r.finished_at),
            short_id(r.id, wide),
        )
        for r in items
    ]
    columns = ["#", "status", "reason", "exit", "trigger", "started", "took", "id"]
    table(f"runs of {name}", columns, rows, wide)


@api_errors
def logs(
    name: str,
    run: Annotated[int | None, typer.Argument(help="run number (default: latest)")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="stream until the run ends", metavar="")
    ] = False,
    rank: Annotated[int, typer.Option(help="which task of a multi-node run")] = 0,
    setup: Annotated[
        bool, typer.Option("--setup", help="clone / start-script output instead", metavar="")
    ] = False,
) -> None:
    """Print a run's logs (the latest run unless a number is given)."""
    with job_client(name, "logs") as api:
        items = api.runs(name, 1000)
        chosen = [r for r in items if run is None or r.number == run]
        if not chosen:
            fail(f"job {name} has no run {run}" if run else f"job {name} has no runs yet")
        run_id = chosen[0].id
        if follow and not setup:
            _follow(api, run_id, rank)
            return
        text = api.logs(run_id, rank, "setup" if setup else "main")
        sys.stdout.write(text)
        if not setup and not text:
            _point_at_setup(api, name, run_id, rank)


def _point_at_setup(api: FlotillaClient, name: str, run_id: str, rank: int) -> None:
    """A run whose setup (the clone, the start script) failed has no main log: say
    where the cause is rather than print nothing."""
    detail = api.run(run_id)
    if detail.status in (RunStatus.FAILED, RunStatus.ERROR) and api.logs(run_id, rank, "setup"):
        err_console.print(
            f"run {detail.number} {detail.status.value} ({detail.reason}) and printed"
            f" nothing: the setup output (clone, start script) is in"
            f" `flo logs {name} {detail.number} --setup`",
            highlight=False,
            markup=False,
        )


def _follow(api: FlotillaClient, run_id: str, rank: int) -> None:
    """Wait (one status line) until the run runs, stream its log until it ends,
    then say how it ended; exit 1 unless it succeeded. Ctrl-C ends it quietly (the
    run goes on), and so does a server that goes away: in one line."""
    try:
        wait_until_running(api, run_id)
        wrote = False
        for chunk in api.follow_logs(run_id, rank):
            wrote = wrote or bool(chunk)
            sys.stdout.write(chunk)
            sys.stdout.flush()
        final = api.run(run_id)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (ApiError, httpx.HTTPError) as e:
        if isinstance(e, ApiError) and e.code != "unreachable":
            raise
        fail("lost the server while following the log", "the run goes on; `flo logs -f` again")
    print(f"--- run {final.number} {final.status.value}: {final.reason}", file=sys.stderr)
    if final.status is not RunStatus.SUCCEEDED:
        if not wrote:
            _point_at_setup(api, final.job, run_id, rank)
        raise typer.Exit(1)


@api_errors
def describe(name: str, run: Annotated[int | None, typer.Argument()] = None) -> None:
    """A run's tasks and events (why is it pending? where did it run?)."""
    with job_client(name, "describe") as api:
        items = api.runs(name, 1000)
        chosen = [r for r in items if run is None or r.number == run]
        if not chosen:
            fail(f"job {name} has no matching run")
        detail = chosen[0]
        events = api.run_events(detail.id)
    print(f"run {detail.number} of {name}: {detail.status.value} ({detail.reason})")
    table(
        "tasks",
        ["rank", "name", "status", "node", "gpus", "pid", "exit"],
        [
            (
                t.rank,
                t.name,
                t.status.value,
                t.node,
                ",".join(map(str, t.gpus)),
                t.pid,
                t.exit_code,
            )
            for t in detail.tasks
        ],
    )
    table(
        "events",
        ["time", "kind", "message", "by"],
        [(ago(e.time), e.kind, e.message, e.actor) for e in events],
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
    documents = [
        {"schema_version": r.schema_version, "type": r.type, "spec": r.spec} for r in recipes
    ]
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
    disable: Annotated[bool, typer.Option("--disable", help="stop scheduling", metavar="")] = False,
) -> None:
    """Enable (optionally with a new cron schedule) or disable a job's schedule."""
    with client() as api:
        result = api.schedule(name, cron, enable=not disable)
    next_at = result.state.next_scheduled_at
    print(
        f"{'unscheduled' if disable else 'scheduled'} job {name}"
        + (f"; next run at {next_at}" if next_at else "")
    )
