"""Printing for the CLI: rich tables, JSON, YAML, and one red line for errors (which
`connected()` and `api_errors` make of an `ApiError`)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import typer
import yaml
from rich.console import Console
from rich.table import Table

from flotilla.client import ApiError, FlotillaClient
from flotilla.errors import FieldProblem

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def print_yaml(data: Any) -> None:
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    t = Table(title=title, header_style="bold")
    for column in columns:
        t.add_column(column)
    for row in rows:
        t.add_row(*["" if v is None else str(v) for v in row])
    console.print(t)


def when(iso: str | None) -> str:
    """An API timestamp in local time, without the date when it is today."""
    if not iso:
        return ""
    moment = datetime.fromisoformat(iso).astimezone()
    today = datetime.now().astimezone().date()
    return moment.strftime("%H:%M:%S" if moment.date() == today else "%Y-%m-%d %H:%M")


def duration(start: str | None, end: str | None) -> str:
    """How long a run ran (so far): `42s`, `3m05s`, `2h10m`."""
    if not start:
        return ""
    stop = datetime.fromisoformat(end) if end else datetime.now(UTC)
    seconds = max(0, int((stop - datetime.fromisoformat(start)).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def fail(message: str, hint: str | None = None, code: int = 1) -> NoReturn:
    err_console.print(
        f"[red]error:[/red] {message}" + (f" [dim]({hint})[/dim]" if hint else ""),
        highlight=False,
        markup=True,
    )
    raise typer.Exit(code)


def fail_problems(where: str, problems: Sequence[FieldProblem]) -> NoReturn:
    """Every invalid field, one line each, then exit 1."""
    for problem in problems:
        err_console.print(
            f"[red]error:[/red] {where}: {problem.path}: {problem.message}", highlight=False
        )
    raise typer.Exit(1)


def fail_api(error: ApiError) -> NoReturn:
    hints = {
        "unreachable": "start one with `flo server`, or set FLOTILLA_URL",
        "unauthorized": "set FLOTILLA_TOKEN or run `flo login`",
    }
    if error.errors:
        fail_problems("server", [FieldProblem(p["field"], p["message"]) for p in error.errors])
    fail(error.message, hints.get(error.code), 3 if error.code == "unreachable" else 1)


@contextmanager
def connected() -> Iterator[FlotillaClient]:
    """A client for the configured server; an API error ends the command in one red
    line with the fix (for command modules that `cli/main.py` imports)."""
    try:
        with FlotillaClient() as api:
            yield api
    except ApiError as e:
        fail_api(e)


def api_errors(func: F) -> F:
    """A command that ends in one red line with the fix on an API error, like
    `connected()` (for the commands of `cli/main.py` and `cli/jobs.py`)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ApiError as e:
            fail_api(e)

    return wrapper  # type: ignore[return-value]


def client() -> FlotillaClient:
    """A client for the configured server (for `api_errors` commands)."""
    return FlotillaClient()
