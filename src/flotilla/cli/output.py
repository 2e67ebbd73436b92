"""Printing for the CLI: rich tables, JSON, YAML, and one red line for errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
import yaml
from rich.console import Console
from rich.table import Table

from flotilla.client import ApiError
from flotilla.errors import FieldProblem

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
