"""Waiting in the terminal: one live status line while a run is queued, waits for
capacity, provisions and starts (`flo apply --start`, `flo start`, `flo logs -f`,
from `cli/jobs.py`), and the `--watch` loop of `flo list|runs|nodes`."""

from __future__ import annotations

import time
from collections.abc import Callable

import typer

from flotilla.api.runs import Run
from flotilla.cli.output import console, err_console
from flotilla.client import FlotillaClient
from flotilla.core.status import RunStatus

POLL_SECONDS = 0.5
WATCH_SECONDS = 2.0
WAITING = {RunStatus.PENDING, RunStatus.PROVISIONING, RunStatus.STARTING}
SPINNER_WIDTH = 3  # the spinner and the space after it, and one column to spare


def phase(run: Run) -> str:
    """What a run is doing, as the status line says it: `queued`, `waiting: no
    capacity …`, `provisioning sim-000003`, `running`."""
    status = run.status.value
    if run.status is RunStatus.PENDING:
        return f"waiting: {run.reason}" if run.reason else "queued"
    if run.status in (RunStatus.PROVISIONING, RunStatus.STARTING):
        nodes = sorted({t.node for t in run.tasks if t.node})
        return f"{status} {', '.join(nodes)}" if nodes else status
    return status


def wait_until_running(api: FlotillaClient, run_id: str) -> Run:
    """Poll a run until it runs or ends, and show its phase with how long that
    phase has lasted: one redrawn line on a terminal, a line per change otherwise
    (a log file reads the same story). Returns the run as last seen."""
    run = api.run(run_id)
    if run.status not in WAITING:
        return run
    shown, since = "", time.monotonic()
    if not err_console.is_terminal:
        while run.status in WAITING:
            if phase(run) != shown:
                shown = phase(run)
                err_console.print(shown, highlight=False, markup=False)
            time.sleep(POLL_SECONDS)
            run = api.run(run_id)
        return run
    with err_console.status("", spinner="dots") as line:
        while run.status in WAITING:
            if phase(run) != shown:
                shown, since = phase(run), time.monotonic()
            line.update(_fit(shown, f" ({time.monotonic() - since:.0f} s)"))
            time.sleep(POLL_SECONDS)
            run = api.run(run_id)
    return run


def _fit(text: str, tail: str) -> str:
    """`text` then `tail` on one terminal line (beside the spinner): the text is
    shortened, never the time."""
    room = err_console.width - SPINNER_WIDTH - len(tail)
    return (text if len(text) <= room else text[: max(0, room - 1)] + "…") + tail


def watch(render: Callable[[], None], enabled: bool) -> None:
    """Render once, or (`--watch`) redraw every WATCH_SECONDS until Ctrl-C."""
    if not enabled:
        return render()
    try:
        while True:
            console.clear()
            render()
            time.sleep(WATCH_SECONDS)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
