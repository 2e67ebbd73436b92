"""Printing for the CLI: rich tables, JSON, YAML, and one red line for errors (which
`connected()` and `api_errors` make of an `ApiError`). Every command module prints
its listings through `table()`, so the rules for 80 columns live here once: names
and statuses are never cut, free text wraps, ids are short and times relative
unless `--wide`; and the shared `--json`, `--wide` and `--watch` flags."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from pydantic import BaseModel
from rich.cells import cell_len
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from flotilla.client import ApiError, FlotillaClient
from flotilla.errors import FieldProblem

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True, soft_wrap=True)


def print_json(data: Any) -> None:
    """`--json`: the data, API models (alone or in a list) as the server sent them."""
    sys.stdout.write(json.dumps(as_sent(data), indent=2) + "\n")


def print_yaml(data: Any) -> None:
    sys.stdout.write(yaml.safe_dump(data, sort_keys=False))


def as_sent(data: Any) -> Any:
    """The client's models as the server's JSON had them (the keys it sent, no
    more: `model_validate` records them); anything else as it is."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json", exclude_unset=True)
    if isinstance(data, list | tuple):
        return [as_sent(item) for item in data]
    return data


# Flags, not options taking a value: `metavar=""` keeps typer's help from showing
# `--json <bool>`, which reads as if `--json true` were the way to ask.
JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="print JSON instead of a table")]
WideOpt = Annotated[
    bool, typer.Option("--wide", "-W", metavar="", help="full ids and timestamps in the table")
]
WatchOpt = Annotated[
    bool, typer.Option("--watch", "-w", metavar="", help="redraw the table every 2 s (Ctrl-C ends)")
]

# Columns a reader needs whole (what the next command takes, what state it is in):
# never wrapped, never cut. Free text columns share what is left and wrap. Columns
# in SPARE give way, rightmost first, when the terminal is too narrow for all (all
# are shown under `--wide`, or in --json).
KEEP = {"name", "status", "state", "last run", "run", "type", "job", "fleet", "node", "#"}
FREE = {"reason", "message", "description", "error", "endpoint", "listeners", "needs"}
SPARE = {
    "id", "owner", "provider", "instance type", "schedule", "trigger", "queued",
    "finished", "version", "exit", "$/h", "age", "prio", "by", "took",
}  # fmt: skip
STATUS_COLUMNS = {"status", "state", "last run"}
STATUS_STYLES = {
    "green": {"succeeded", "completed", "running", "ready", "active", "serving", "online"},
    "red": {"failed", "error", "terminated", "unhealthy", "offline", "lost", "interrupted"},
    "yellow": {"pending", "queued", "provisioning", "waiting", "starting", "stopping", "draining"},
    "dim": {"stopped", "cancelled", "cordoned", "deleted", "idle"},
}
SHORT_ID = 8
GUTTER = 2  # the spaces between two columns
FREE_MIN = 12  # a free text column narrower than this is a column of broken words


def status_text(status: str) -> Text:
    """A status in its colour: green when well, red when broken, yellow in between."""
    for style, words in STATUS_STYLES.items():
        if status in words:
            return Text(status, style=style)
    return Text(status)


def short_id(value: str | None, wide: bool = False) -> str:
    """An id as a table shows it: its first 8 characters unless `--wide`."""
    if not value:
        return ""
    return value if wide else value[:SHORT_ID]


def table(
    title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]], wide: bool = False
) -> None:
    """Print rows under their column headers. Cells are plain text (brackets in a
    reason stay brackets); KEEP columns are never cut, FREE ones wrap, SPARE ones
    are left out when the terminal has no room for them (never under `wide`)."""
    cells = [[_cell(c, v) for c, v in zip(columns, row, strict=True)] for row in rows]
    texts = [[c, *(row[i].plain for row in cells)] for i, c in enumerate(columns)]
    shown, widths = list(range(len(columns))), list[int | None]([None] * len(columns))
    if not wide:
        shown, widths = _layout(columns, texts, console.width)
    # No borders (as kubectl prints): two spaces between columns leave the most
    # room for names at 80 columns.
    t = Table(title=title, header_style="bold", box=None, pad_edge=False, padding=(0, 1))
    for i in shown:
        t.add_column(columns[i], no_wrap=columns[i] in KEEP, overflow="fold", width=widths[i])
    for row_cells in cells:
        t.add_row(*[row_cells[i] for i in shown])
    # `--wide` is for reading everything: lines as long as the rows, not folded.
    full = sum(max(cell_len(t) for t in column) for column in texts) + GUTTER * len(columns)
    if not wide or full <= console.width:
        return console.print(t)
    width = console.width
    console.width = full
    try:
        console.print(t)
    finally:
        console.width = width


def _layout(
    columns: Sequence[str], texts: Sequence[Sequence[str]], width: int
) -> tuple[list[int], list[int | None]]:
    """Which columns to show in `width`, and how wide each (None: as wide as it
    likes). SPARE columns go, rightmost first, until every KEEP column fits whole
    and every other one unbroken (its longest word); the room left goes to the
    other columns up to their widest cell, free text last."""
    natural = [max(cell_len(t) for t in column) for column in texts]
    least = [_least(c, texts[i], natural[i]) for i, c in enumerate(columns)]
    shown = list(range(len(columns)))
    if sum(natural) + GUTTER * (len(shown) - 1) <= width:
        return shown, [None] * len(columns)
    spare = [i for i in reversed(shown) if columns[i] in SPARE]
    while sum(least[i] for i in shown) + GUTTER * (len(shown) - 1) > width and spare:
        shown.remove(spare.pop(0))
    widths: list[int | None] = [least[i] if i in shown else None for i in range(len(columns))]
    room = width - sum(least[i] for i in shown) - GUTTER * (len(shown) - 1)
    for i in sorted(shown, key=lambda i: columns[i] in FREE):
        grow = min(max(0, room), natural[i] - least[i])
        widths[i], room = least[i] + grow, room - grow
    return shown, widths


def _least(column: str, texts: Sequence[str], natural: int) -> int:
    """The narrowest a column can be: whole cells for KEEP, FREE_MIN for free text
    (it folds), the longest word for the rest."""
    if column in KEEP:
        return natural
    if column in FREE:
        return min(natural, FREE_MIN)
    return max(cell_len(w) for t in texts for w in (t.split() or [""]))


def _cell(column: str, value: Any) -> Text:
    if value is None:
        return Text("")
    if column in STATUS_COLUMNS:
        return status_text(str(value))
    return Text(str(value))


def ago(iso: str | None, wide: bool = False) -> str:
    """An API timestamp as a table shows it: `3m ago`, or ISO under `--wide`."""
    if not iso:
        return ""
    if wide:
        return iso
    moment = datetime.fromisoformat(iso)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    seconds = int((datetime.now(UTC) - moment).total_seconds())
    if seconds < 0:
        return "in " + _span(-seconds)
    return "just now" if seconds < 1 else _span(seconds) + " ago"


def _span(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


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
        f"[red]error:[/red] {escape(message)}" + (f" [dim]({escape(hint)})[/dim]" if hint else ""),
        highlight=False,
        markup=True,
    )
    raise typer.Exit(code)


def fail_problems(where: str, problems: Sequence[FieldProblem]) -> NoReturn:
    """Every invalid field, one line each, then exit 1."""
    for problem in problems:
        err_console.print(
            f"[red]error:[/red] {escape(f'{where}: {problem.path}: {problem.message}')}",
            highlight=False,
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
