"""How big each fleet should be, and which of its nodes may go. Pure: no database,
no provider. Called by the fleet reconciler (`server/reconcilers/fleets.py`) with
what it loaded, and by the fleet API to show the desired size.

A fleet's desired size is `clamp(MIN, MAX, busy + wanted + spares)`: the nodes
holding work, the nodes its share of the pending queue needs (`core.packing`), and
its warm spares. A fixed fleet has MIN = MAX = N, so it is always N. Each pending
run counts towards one fleet only — the cheapest per GPU that serves it and can
still grow — so two fleets of the same GPU never both scale up for one run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from flotilla.core.packing import shape


@dataclass(frozen=True)
class FleetShape:
    """What sizing needs to know of a fleet and its instance type."""

    id: str
    name: str
    min: int
    max: int
    spares: int
    gpu_type: str
    gpus: int  # per node
    spot: bool
    price_per_hour: float  # of one node


@dataclass(frozen=True)
class Demand:
    """A pending run: `tasks` tasks of `gpus_per_task` GPUs of `gpu_type` (None: any)."""

    run_id: str
    gpu_type: str | None
    gpus_per_task: int
    tasks: int
    spot: bool


@dataclass(frozen=True)
class Member:
    """A live node of a fleet, as sizing sees it."""

    id: str
    schedulable: bool  # `ready`: the only state that takes new work
    busy: bool  # a run holds it
    idle_since: datetime | None
    # Counts towards the fleet's size. A node that is failing, has its spot notice
    # or is being scaled down does not, so its replacement comes up in time.
    counted: bool


def nodes_needed(fleet: FleetShape, demand: Demand) -> int | None:
    """How many of the fleet's nodes the run needs, or None if the fleet cannot
    serve it: another GPU type, more GPUs per task than a node has, spot work on an
    on-demand fleet (or the reverse), or more nodes than the fleet may ever have."""
    if demand.gpus_per_task <= 0 or demand.spot != fleet.spot:
        return None
    if demand.gpu_type is not None and demand.gpu_type.upper() != fleet.gpu_type.upper():
        return None
    if demand.gpus_per_task > fleet.gpus:
        return None
    count = shape(demand.tasks, demand.gpus_per_task, fleet.gpus).nodes
    return count if count <= fleet.max else None


def assign_demand(
    fleets: Sequence[FleetShape], busy: dict[str, int], demands: Sequence[Demand]
) -> dict[str, int]:
    """Nodes wanted by the pending queue, per fleet id. Runs are taken in queue
    order; each goes to the cheapest fleet (per GPU-hour) that serves it and still
    has room under its MAX."""
    wanted = {f.id: 0 for f in fleets}
    by_price = sorted(fleets, key=lambda f: (f.price_per_hour / max(f.gpus, 1), f.name))
    for demand in demands:
        for fleet in by_price:
            need = nodes_needed(fleet, demand)
            if need is not None and busy.get(fleet.id, 0) + wanted[fleet.id] + need <= fleet.max:
                wanted[fleet.id] += need
                break
    return wanted


def can_grow(fleets: Sequence[FleetShape], busy: dict[str, int], wanted: dict[str, int]) -> bool:
    """Whether some fleet that can change size (MIN below MAX) still has room under
    its MAX for one more node of the queue's: once none has, runs further back in
    the queue change no size. Fixed fleets are always their N."""
    return any(f.min < f.max and busy.get(f.id, 0) + wanted.get(f.id, 0) < f.max for f in fleets)


def desired_size(fleet: FleetShape, busy: int, wanted: int) -> int:
    return max(fleet.min, min(fleet.max, busy + wanted + fleet.spares))


def current_size(members: Sequence[Member]) -> int:
    return sum(1 for m in members if m.counted)


def idle_since(member: Member, now: datetime) -> datetime | None:
    """None while a node holds work; when it first found it free otherwise."""
    if member.busy:
        return None
    return member.idle_since or now


def scale_down(
    fleet: FleetShape,
    members: Sequence[Member],
    desired: int,
    idle_timeout: float,
    now: datetime,
) -> list[tuple[str, str]]:
    """(node id, reason) of the nodes to release: the excess over `desired`, taken
    from ready nodes that hold no work, longest idle first. Above MAX they go at
    once (the recipe shrank); between `desired` and MAX only after `idle_timeout`.
    A node that holds work is never chosen."""
    excess = current_size(members) - desired
    if excess <= 0:
        return []
    over_max = current_size(members) - fleet.max
    idle = sorted(
        (m for m in members if m.counted and m.schedulable and not m.busy),
        key=lambda m: m.idle_since or now,
    )
    out: list[tuple[str, str]] = []
    for member in idle:
        if len(out) >= excess:
            break
        idle_for = (now - (member.idle_since or now)).total_seconds()
        if len(out) < over_max:
            out.append((member.id, f"fleet {fleet.name} shrank to at most {fleet.max} nodes"))
        elif idle_for >= idle_timeout:
            out.append((member.id, f"idle for {format_seconds(idle_for)}"))
    return out


def format_seconds(seconds: float) -> str:
    """`10m0s`, `1h2m3s`, `4s`: Go's duration style, whole seconds."""
    total = int(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
