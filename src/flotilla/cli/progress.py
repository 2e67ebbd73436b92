"""Waiting in the terminal: one live status line while a run is queued, waits for
capacity, provisions and starts (`flo apply --start`, `flo start`, `flo logs -f`,
from `cli/jobs.py`), and the `--watch` loop of `flo list|runs|nodes`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import typer

from flotilla.cli.output import console, err_console
from flotilla.client import FlotillaClient

POLL_SECONDS = 0.5
WATCH_SECONDS = 2.0
WAITING = {"pending", "provisioning", "starting"}
SPINNER_WIDTH = 3  # the spinner and the space after it, and one column to spare


def phase(run: dict[str, Any]) -> str:
    """What a run is doing, as the status line says it: `queued`, `waiting: no
    capacity …`, `provisioning sim-000003`, `running`."""
    status, reason = str(run["status"]), str(run.get("reason") or "")
    if status == "pending":
        return f"waiting: {reason}" if reason else "queued"
    if status in ("provisioning", "starting"):
        nodes = sorted({str(t["node"]) for t in run.get("tasks", []) if t.get("node")})
        return f"{status} {', '.join(nodes)}" if nodes else status
    return status


def wait_until_running(api: FlotillaClient, run_id: str) -> dict[str, Any]:
    """Poll a run until it runs or ends, and show its phase with how long that
    phase has lasted: one redrawn line on a terminal, a line per change otherwise
    (a log file reads the same story). Returns the run as last seen."""
    run = api.run(run_id)
    if run["status"] not in WAITING:
        return run
    shown, since = "", time.monotonic()
    if not err_console.is_terminal:
        while run["status"] in WAITING:
            if phase(run) != shown:
                shown = phase(run)
                err_console.print(shown, highlight=False, markup=False)
            time.sleep(POLL_SECONDS)
            run = api.run(run_id)
        return run
    with err_console.status("", spinner="dots") as line:
        while run["status"] in WAITING:
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
