"""Usage and cost (`/api/usage`, `/api/usage/runs/{id}`, and Saturn's daily usage
under `/api/orgs/...`): node-seconds, GPU-hours and dollars, billed per second.
`GET /api/usage?format=csv` answers the same rows as `text/csv`."""

from __future__ import annotations

from pydantic import Field

from flotilla.api.base import ApiModel


class UsageFigures(ApiModel):
    """Billed use: seconds rounded up per record, dollars to the cent."""

    node_seconds: float  # seconds x share of the node
    gpu_seconds: float
    gpu_hours: float
    node_hours: float
    cost: float
    spot_cost: float
    on_demand_cost: float
    runs: int  # distinct runs


class UsageKeys(ApiModel):
    """What a report row is grouped by: only the fields of its `by` are present (a
    `group` or `project` of None is usage without one)."""

    user: str | None = None
    group: str | None = None
    project: str | None = None
    instance_type: str | None = None  # by `resource`
    day: str | None = None  # ISO date, UTC


# Bases in this order put the key fields first, as the rows have always been.
class UsageRow(UsageFigures, UsageKeys):
    """One row of a report: its key fields, then its figures."""


class UsageReport(ApiModel):
    by: list[str]
    since: str
    until: str
    rows: list[UsageRow] = Field(description="sorted by key, None first")
    total: UsageFigures  # rounded from the unrounded sums


class TaskCost(ApiModel):
    task_id: str
    node: str
    instance_type: str
    gpu_type: str | None
    gpus: int
    spot: bool
    share: float  # of the node
    price_per_hour: float  # of the share
    started_at: str
    ended_at: str | None  # None: still running, billed up to now
    billed_seconds: int
    cost: float


class RunTasksCost(ApiModel):
    run_id: str
    tasks: list[TaskCost]  # one per metered task, every attempt


class RunCost(UsageFigures, RunTasksCost):
    """What one run has cost so far: its tasks, then their totals."""


class SaturnDailyUsage(ApiModel):
    """One row of Saturn's daily usage (saturn-client's `get_org_usage`)."""

    date: str
    user: str
    owner: str
    project: str | None
    instance_type: str
    gpu_hours: float
    node_hours: float
    cost: float
    spot_cost: float
    on_demand_cost: float
    runs: int


class SaturnDailyUsageList(ApiModel):
    usage: list[SaturnDailyUsage]
