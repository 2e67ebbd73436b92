"""The arithmetic of metering: billing a node share per second, cutting a billed
interval to a report window and across UTC days, summing it up by key, and
rendering the result as JSON-ready dicts or CSV. Pure: no server, database or I/O.

Called by `server/services/metering/usage.py` (reports, per-run cost),
`services/metering/budgets.py` (this month's use against a limit),
`routers/metrics.py` (Prometheus totals) and `reconcilers/metering.py` (a task's
share of its node).

Billing rule
------------
A usage record is one task's share of one node from `started_at` to `ended_at`
(`now` while it is still open). Like the clouds, time is billed in whole seconds
rounded up: ``billed = ceil(ended_at - started_at)``, and

- cost = seconds x price_per_hour / 3600 (the price captured when the record opened);
- GPU-seconds = seconds x GPUs held; node-seconds = seconds x share of the node.

A report window `[since, until)` keeps the part of the record's interval inside
it, and the by-day report cuts that part at UTC midnights. Each part is billed
its share of the rounded-up whole (part x billed / actual), so the round-up is
spread over the interval rather than put at its end: a window that holds a whole
record bills exactly its billed seconds (even when the window ends now, just after
the record did), and the parts of a record always add up to them. A part's
seconds may therefore be fractional; a whole record's never are.

Share of a node
---------------
- the task holds GPUs and the node has some: task GPUs / node GPUs;
- otherwise, when the node's CPU count is known: task CPUs / node CPUs, capped at 1
  (a task that does not say how many CPUs it needs counts as one core);
- otherwise: 0 on a GPU node (the task holds none of what the node is priced by)
  and 1 on a GPU-less node (it is billed the node it runs on).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

SECONDS_PER_HOUR = 3600
_MICROSECONDS = 1_000_000

# What a report may be grouped by, and the field each key fills in a row. `owner`
# is internal (the Saturn-shaped daily report); the public API offers the others.
KEY_FIELDS = {
    "user": "user",
    "group": "group",
    "project": "project",
    "resource": "instance_type",
    "day": "day",
    "owner": "owner",
}
PUBLIC_KEYS = ("user", "group", "project", "resource", "day")


def billed_seconds(started_at: datetime, ended_at: datetime) -> int:
    """Whole seconds billed for `[started_at, ended_at)`, rounded up (0 if empty).
    Exact: computed on integer microseconds, never on floats."""
    micros = (ended_at - started_at) // timedelta(microseconds=1)
    return max(0, -(-micros // _MICROSECONDS))


def cost_of(seconds: float, price_per_hour: float) -> float:
    return seconds * price_per_hour / SECONDS_PER_HOUR


def node_share(task_gpus: int, node_gpus: int, task_cpus: float | None, node_cpus: int) -> float:
    """The part of a node a task is billed for (see the module docstring)."""
    if task_gpus > 0 and node_gpus > 0:
        return min(1.0, task_gpus / node_gpus)
    if node_cpus > 0:
        return min(1.0, (task_cpus or 1.0) / node_cpus)
    return 0.0 if node_gpus > 0 else 1.0


def cents(value: float) -> float:
    """Dollars rounded to the cent, half up (0.005 -> 0.01), as people expect."""
    return float(Decimal(repr(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def month_start(now: datetime) -> datetime:
    """Midnight UTC on the first day of `now`'s month: where monthly budgets reset."""
    now = now.astimezone(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def split_by_day(start: datetime, end: datetime) -> list[tuple[date, float]]:
    """Seconds of `[start, end)` falling on each UTC day, in order."""
    out: list[tuple[date, float]] = []
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    while start < end:
        midnight = datetime.combine(start.date() + timedelta(days=1), time(), tzinfo=UTC)
        piece_end = min(end, midnight)
        out.append((start.date(), (piece_end - start).total_seconds()))
        start = piece_end
    return out


@dataclass(frozen=True)
class UsageRecord:
    """One metered node share, as the store keeps it (`UsageModel`)."""

    run_id: str
    user: str
    owner: str
    owner_kind: str
    project: str | None
    instance_type: str
    gpus: int
    spot: bool
    share: float
    price_per_hour: float
    started_at: datetime
    ended_at: datetime | None  # None: still open, billed up to `now`

    def interval(self, now: datetime) -> tuple[datetime, datetime]:
        """When it ran: to `now` while open, never ending before it started."""
        return self.started_at, max(self.started_at, self.ended_at or now)

    def billing_factor(self, now: datetime) -> float:
        """Billed seconds per second actually used (1 to 1 + 1/length)."""
        start, end = self.interval(now)
        actual = (end - start).total_seconds()
        return billed_seconds(start, end) / actual if actual > 0 else 0.0

    def key(self, name: str, day: date | None = None) -> str | None:
        if name == "user":
            return self.user
        if name == "group":  # usage owned by a group; None for a user's own work
            return self.owner if self.owner_kind == "group" else None
        if name == "project":
            return self.project
        if name == "resource":
            return self.instance_type
        if name == "owner":
            return self.owner
        if name == "day":
            return day.isoformat() if day else None
        raise ValueError(f"unknown usage key {name!r}")


@dataclass
class Totals:
    """Unrounded sums; rounding happens only in `view()`."""

    node_seconds: float = 0.0
    gpu_seconds: float = 0.0
    cost: float = 0.0
    spot_cost: float = 0.0
    on_demand_cost: float = 0.0
    runs: set[str] = field(default_factory=set)

    def add(self, record: UsageRecord, seconds: float) -> None:
        cost = cost_of(seconds, record.price_per_hour)
        self.node_seconds += seconds * record.share
        self.gpu_seconds += seconds * record.gpus
        self.cost += cost
        if record.spot:
            self.spot_cost += cost
        else:
            self.on_demand_cost += cost
        self.runs.add(record.run_id)

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / SECONDS_PER_HOUR

    def view(self) -> dict[str, float | int]:
        return {
            "node_seconds": round(self.node_seconds, 3),
            "gpu_seconds": round(self.gpu_seconds, 3),
            "gpu_hours": round(self.gpu_hours, 6),
            "node_hours": round(self.node_seconds / SECONDS_PER_HOUR, 6),
            "cost": cents(self.cost),
            "spot_cost": cents(self.spot_cost),
            "on_demand_cost": cents(self.on_demand_cost),
            "runs": len(self.runs),
        }


@dataclass
class Report:
    by: tuple[str, ...]
    rows: dict[tuple[str | None, ...], Totals] = field(default_factory=dict)
    total: Totals = field(default_factory=Totals)

    def view_rows(self) -> list[dict[str, object]]:
        """Rows sorted by key (None first), each its key fields then its figures."""
        fields = [KEY_FIELDS[k] for k in self.by]
        ordered = sorted(
            self.rows.items(), key=lambda kv: [(v is not None, v or "") for v in kv[0]]
        )
        return [{**dict(zip(fields, key, strict=True)), **t.view()} for key, t in ordered]


def clip(
    start: datetime, end: datetime, since: datetime | None, until: datetime | None
) -> tuple[datetime, datetime] | None:
    """The part of `[start, end)` inside `[since, until)`, or None."""
    lo = max(start, since) if since else start
    hi = min(end, until) if until else end
    return (lo, hi) if lo < hi else None


def aggregate(
    records: Iterable[UsageRecord],
    by: Sequence[str],
    now: datetime,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Report:
    """Sum the billed use of `records` inside `[since, until)`, grouped by `by`
    (keys of `KEY_FIELDS`; `day` cuts intervals at UTC midnight)."""
    for name in by:
        if name not in KEY_FIELDS:
            raise ValueError(f"unknown usage key {name!r}")
    report = Report(tuple(by))
    for record in records:
        part = clip(*record.interval(now), since, until)
        if part is None:
            continue
        factor = record.billing_factor(now)
        pieces: list[tuple[date | None, float]]
        if "day" in by:
            pieces = list(split_by_day(*part))
        else:
            pieces = [(None, (part[1] - part[0]).total_seconds())]
        for day, actual in pieces:
            key = tuple(record.key(k, day) for k in by)
            report.rows.setdefault(key, Totals()).add(record, actual * factor)
            report.total.add(record, actual * factor)
    return report


def render_csv(rows: Sequence[dict[str, object]], columns: Sequence[str]) -> str:
    """CSV with a header row; None becomes an empty cell."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
    return out.getvalue()


FIGURES = (
    "node_seconds",
    "gpu_seconds",
    "gpu_hours",
    "node_hours",
    "cost",
    "spot_cost",
    "on_demand_cost",
    "runs",
)


def csv_columns(by: Sequence[str]) -> list[str]:
    return [KEY_FIELDS[k] for k in by] + list(FIGURES)
