"""`flo queue` (pending runs in order, with why each waits) and `flo policy`
(quotas, fair-share weights, preemption rule). Registered by `cli/main.py`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from flotilla.api.queue import QueuedRun
from flotilla.cli.output import (
    JsonOpt,
    WideOpt,
    as_sent,
    connected,
    fail,
    print_json,
    print_yaml,
    table,
)


def register(app: typer.Typer) -> None:
    app.command("queue")(queue_command)
    app.command("policy")(policy_command)


def queue_command(
    limit: Annotated[
        int, typer.Option("--limit", "-n", min=1, max=1000, help="runs per page")
    ] = 100,
    show_all: Annotated[
        bool, typer.Option("--all", "-A", help="every pending run, page after page", metavar="")
    ] = False,
    json: JsonOpt = False,
    wide: WideOpt = False,
) -> None:
    """Pending runs, oldest first, with the reason each one is waiting."""
    with connected() as api:
        page = api.queue(limit)
        runs = list(page.runs)
        while show_all and page.next is not None:
            page = api.queue(limit, page.next)
            runs += page.runs
    if json:
        return print_json(runs)
    rows = [
        (
            r.position,
            f"{r.job}#{r.number}",
            r.owner,
            r.priority,
            _shape(r),
            _waited(r.waiting_seconds),
            r.reason,
        )
        for r in runs
    ]
    table(None, ["#", "run", "owner", "prio", "needs", "waiting", "reason"], rows, wide)
    if page.next is not None:
        print(f"(the first {len(runs)}; more wait: flo queue --all, or --limit N)")


def policy_command(
    set_file: Annotated[
        Path | None, typer.Option("--set", help="replace the policy with this YAML/JSON file")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Show the scheduler policy, or replace it (`--set policy.yaml`): user_quota,
    project_quota (GPUs held at once), user_weight (fair share), preempt_equal_priority."""
    with connected() as api:
        policy = (
            api.scheduler_policy()
            if set_file is None
            else api.set_scheduler_policy(_read(set_file))
        )
    shown = as_sent(policy)
    print_json(shown) if json else print_yaml(shown)


def _read(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail(f"cannot read {path}: {e}")
    if not isinstance(data, dict):
        fail(f"{path}: expected a mapping with user_quota, project_quota, user_weight")
    return data


def _shape(run: QueuedRun) -> str:
    gpu = run.gpu or "no GPU"
    scale = f"{run.scale} x " if run.scale > 1 else ""
    return f"{scale}{gpu}" + (" spot" if run.spot else "")


def _waited(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
