"""What-if simulation: replay a job trace through the real scheduler core on a
virtual fleet, in simulated time, and report what the fleet would have done.

Called by `flo simulate`. Pure apart from reading nothing: the caller passes the
fleet spec and the trace rows. Nodes of an elastic fleet (`MIN..MAX`) are billed
from their first use to their last use plus the idle timeout, and the `MIN` nodes
all along; a fixed fleet is billed all along.
"""

from __future__ import annotations

import csv
import heapq
import io
import random
import statistics
from dataclasses import dataclass, field
from typing import Any

from flotilla.compute.sim.topology import virtual_cluster
from flotilla.core.catalog import instance_type
from flotilla.core.queue import QueuedRun, RunningRun, schedule
from flotilla.core.topology import CapacityIndex
from flotilla.recipes.fleet import FleetSpec, Placement

TRACE_COLUMNS = ("arrival", "nodes", "gpus", "duration", "user", "priority")


@dataclass(frozen=True)
class TraceRow:
    id: str
    arrival: float
    nodes: int
    gpus: int  # per node
    duration: float
    user: str
    priority: int = 0


def read_trace(text: str) -> list[TraceRow]:
    """CSV with a header: arrival,nodes,gpus,duration,user[,priority] (seconds)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in TRACE_COLUMNS[:5] if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"trace is missing column(s): {', '.join(missing)}")
    rows = []
    for number, row in enumerate(reader, start=2):
        try:
            rows.append(
                TraceRow(
                    id=f"job{number - 1}",
                    arrival=float(row["arrival"]),
                    nodes=int(row["nodes"]),
                    gpus=int(row["gpus"]),
                    duration=float(row["duration"]),
                    user=row["user"].strip(),
                    priority=int(row.get("priority") or 0),
                )
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"trace line {number}: {e}") from e
        if rows[-1].nodes < 1 or rows[-1].gpus < 1 or rows[-1].duration <= 0:
            raise ValueError(f"trace line {number}: nodes, gpus and duration must be positive")
    return sorted(rows, key=lambda r: (r.arrival, r.id))


def generate_trace(runs: int, users: int = 4, seed: int = 1, span: float = 3600.0) -> str:
    """A synthetic trace: Poisson-ish arrivals over `span` seconds, mixed shapes."""
    rng = random.Random(seed)
    shapes = ((1, 1), (1, 2), (1, 4), (1, 8), (2, 8), (4, 8))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(TRACE_COLUMNS)
    arrival = 0.0
    for _ in range(runs):
        arrival += rng.expovariate(runs / span)
        nodes, gpus = rng.choice(shapes)
        writer.writerow(
            [
                round(arrival, 1),
                nodes,
                gpus,
                round(rng.uniform(300, 3600), 1),
                f"user{rng.randrange(users)}",
                rng.choice((0, 0, 0, 1)),
            ]
        )
    return out.getvalue()


@dataclass
class Report:
    gpus: int
    makespan_s: float
    gpu_allocation_pct: float
    cost_usd: float
    wait_s: dict[str, dict[str, float]]  # user -> p50 / p95
    fair_share_deviation: float
    unplaceable: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "gpus": self.gpus,
            "makespan_s": round(self.makespan_s, 1),
            "gpu_allocation_pct": round(self.gpu_allocation_pct, 2),
            "cost_usd": round(self.cost_usd, 2),
            "queue_wait_s": self.wait_s,
            "fair_share_deviation": round(self.fair_share_deviation, 4),
            "unplaceable_runs": self.unplaceable,
        }


def simulate(fleet: FleetSpec, trace: list[TraceRow]) -> Report:
    kind = instance_type(fleet.instance_type)
    low, high = fleet.node_range()
    partitions = 1 if fleet.placement == Placement.CLUSTER else max(1, high // 64)
    nodes = virtual_cluster(
        kind, high, partitions, region=fleet.region or "us-east1", spot=fleet.spot
    )
    index = CapacityIndex(nodes)
    type_index = index.index(kind.gpu_type)
    assert type_index is not None
    rows = {r.id: r for r in trace}
    unplaceable = [r.id for r in trace if r.gpus > kind.gpus or r.nodes > high]
    arrivals = [r for r in trace if r.id not in unplaceable]
    pending: list[QueuedRun] = []
    ends: list[tuple[float, str, tuple[str, ...]]] = []
    started: dict[str, float] = {}
    running: dict[str, RunningRun] = {}
    usage: dict[str, float] = {}  # GPU-seconds granted so far, for fair share
    used: dict[str, tuple[float, float]] = {}  # node -> first and last busy instant
    now = arrivals[0].arrival if arrivals else 0.0
    first_arrival = now
    cursor = 0
    while cursor < len(arrivals) or pending or ends:
        while cursor < len(arrivals) and arrivals[cursor].arrival <= now:
            row = arrivals[cursor]
            pending.append(
                QueuedRun(
                    row.id,
                    row.user,
                    "default",
                    row.nodes,
                    row.gpus,
                    kind.gpu_type,
                    row.priority,
                    row.arrival,
                )
            )
            cursor += 1
        decision = schedule(index, pending, running.values(), usage)
        for run_id, placed in decision.placed.items():
            row = rows[run_id]
            started[run_id] = now
            running[run_id] = RunningRun(
                run_id, row.user, "default", row.priority, tuple((n, row.gpus) for n in placed)
            )
            usage[row.user] = usage.get(row.user, 0.0) + row.nodes * row.gpus * row.duration
            heapq.heappush(ends, (now + row.duration, run_id, placed))
            for name in placed:
                first, _ = used.get(name, (now, now))
                used[name] = (first, now + row.duration)
        pending = [r for r in pending if r.id not in decision.placed]
        upcoming = [
            t
            for t in (
                ends[0][0] if ends else None,
                arrivals[cursor].arrival if cursor < len(arrivals) else None,
            )
            if t is not None
        ]
        if not upcoming:
            unplaceable += [r.id for r in pending]
            break
        now = min(upcoming)
        while ends and ends[0][0] <= now:
            _, run_id, placed = heapq.heappop(ends)
            running.pop(run_id, None)
            for name in placed:
                type_index.release(name, rows[run_id].gpus)
    makespan = (
        max((started[r] + rows[r].duration for r in started), default=first_arrival) - first_arrival
    )
    gpu_seconds = sum(rows[r].nodes * rows[r].gpus * rows[r].duration for r in started)
    capacity = high * kind.gpus * makespan
    cost = _cost(kind.price_per_hour(fleet.spot), fleet, low, high, used, first_arrival, makespan)
    return Report(
        gpus=high * kind.gpus,
        makespan_s=makespan,
        gpu_allocation_pct=100 * gpu_seconds / capacity if capacity else 0.0,
        cost_usd=cost,
        wait_s=_waits(rows, started),
        fair_share_deviation=_fair_share_deviation(rows, started),
        unplaceable=unplaceable,
    )


def _cost(
    node_hour: float,
    fleet: FleetSpec,
    low: int,
    high: int,
    used: dict[str, tuple[float, float]],
    start: float,
    makespan: float,
) -> float:
    if low == high:
        return node_hour * high * makespan / 3600
    idle = fleet.idle_timeout_seconds()
    busy = sorted(used.values(), key=lambda span: -(span[1] - span[0]))
    billed = sum(min(last + idle, start + makespan) - first for first, last in busy[low:])
    return node_hour * (low * makespan + billed) / 3600


def _waits(rows: dict[str, TraceRow], started: dict[str, float]) -> dict[str, dict[str, float]]:
    by_user: dict[str, list[float]] = {}
    for run_id, at in started.items():
        by_user.setdefault(rows[run_id].user, []).append(at - rows[run_id].arrival)
    out = {}
    for user, waits in sorted(by_user.items()):
        waits.sort()
        p95 = waits[min(len(waits) - 1, round(0.95 * (len(waits) - 1)))]
        out[user] = {"p50": round(statistics.median(waits), 1), "p95": round(p95, 1)}
    return out


def _fair_share_deviation(rows: dict[str, TraceRow], started: dict[str, float]) -> float:
    """How unequally users waited: the coefficient of variation of their mean queue
    wait (0 when every user waited the same on average). Every run eventually gets
    its GPU-seconds in a replay, so fairness shows in who waited, not who got."""
    waits: dict[str, list[float]] = {}
    for run_id, at in started.items():
        waits.setdefault(rows[run_id].user, []).append(at - rows[run_id].arrival)
    means = [statistics.fmean(w) for w in waits.values()]
    if len(means) < 2 or statistics.fmean(means) == 0:
        return 0.0
    return statistics.pstdev(means) / statistics.fmean(means)
