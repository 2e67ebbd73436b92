"""`flo simulate` and `flo trace`: what-if planning on a virtual fleet, offline
(no server needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml

from flotilla.cli.output import JsonOpt, fail, fail_problems, print_json, table
from flotilla.compute.sim.whatif import generate_trace, read_trace, simulate
from flotilla.errors import InvalidRecipe
from flotilla.recipes.envelope import parse_typed
from flotilla.recipes.fleet import FleetSpec


def simulate_command(
    fleet: Annotated[Path, typer.Option(help="fleet recipe (YAML)")],
    trace: Annotated[
        Path, typer.Option(help="trace CSV: arrival,nodes,gpus,duration,user[,priority]")
    ],
    json: JsonOpt = False,
) -> None:
    """Replay a job trace through the scheduler on a virtual fleet, in simulated time."""
    try:
        spec = parse_typed(yaml.safe_load(fleet.read_text()), "fleet", FleetSpec)
        rows = read_trace(trace.read_text())
    except InvalidRecipe as e:
        fail_problems(str(fleet), e.problems)
    except (OSError, ValueError, yaml.YAMLError) as e:
        fail(str(e))
    assert isinstance(spec, FleetSpec)
    report = simulate(spec, rows).as_dict()
    if json:
        return print_json(report)
    print(
        f"{len(rows)} runs on {report['gpus']} {spec.instance_type} GPUs: makespan "
        f"{report['makespan_s'] / 3600:.2f} h, GPU allocation {report['gpu_allocation_pct']}%, "
        f"cost ${report['cost_usd']:,.2f}, fair-share deviation {report['fair_share_deviation']}"
    )
    waits = report["queue_wait_s"]
    table(
        "queue wait per user (s)",
        ["user", "p50", "p95"],
        [(u, w["p50"], w["p95"]) for u, w in waits.items()],
    )
    if report["unplaceable_runs"]:
        print(f"never placeable on this fleet: {', '.join(report['unplaceable_runs'])}")


def trace_command(
    runs: Annotated[int, typer.Option(min=1, help="how many runs")] = 100,
    users: Annotated[int, typer.Option(min=1)] = 4,
    span: Annotated[float, typer.Option(help="arrivals spread over this many seconds")] = 3600.0,
    seed: int = 1,
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Write a synthetic job trace (CSV) for `flo simulate`."""
    text = generate_trace(runs, users, seed, span)
    if output:
        output.write_text(text)
        print(f"wrote {runs} runs to {output}")
    else:
        print(text, end="")
