"""`GET /metrics`: Prometheus text exposition of usage, cost, GPUs held and budget
use, built per scrape from the store (a fresh `CollectorRegistry` each time), so
every server process behind one database reports the same figures.

Platform admins only, unless the server runs with FLOTILLA_METRICS_PUBLIC=1
(`ServerContext.metrics_public`), for scrapers without credentials. Kept out of
the OpenAPI schema (it is not JSON), like `/healthz`.

Other components add their own metrics to the same endpoint by appending a
collector (anything with `collect()`) to `ServerContext.metrics_collectors`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.metering import Totals, UsageRecord, billed_seconds
from flotilla.core.status import HOLDING
from flotilla.server.db.models import BudgetModel, RecipeModel, RunModel, TaskModel, UsageModel
from flotilla.server.routers.deps import Ctx
from flotilla.server.security import current_identity
from flotilla.server.services.metering.budgets import budget_checks
from flotilla.server.services.metering.usage import record_of
from flotilla.server.services.runs.runs import current_tasks, run_tasks

router = APIRouter(tags=["metrics"])
USAGE_LABELS = ("user", "project", "owner", "instance_type", "spot")


class Snapshot:
    """Metric families computed beforehand (the store is async, `collect` is not)."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


@router.get("/metrics", include_in_schema=False)
async def metrics(ctx: Ctx, request: Request) -> Response:
    if not ctx.metrics_public:
        caller = await current_identity(request)
        caller.require_admin()
    now = ctx.clock.now()
    async with ctx.sessions() as session:
        families = [
            *await usage_families(session, now),
            await running_gpus_family(session),
            await budget_family(session, now),
        ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(families))
    for collector in ctx.metrics_collectors:
        registry.register(collector)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def usage_families(session: AsyncSession, now: datetime) -> list[Metric]:
    """All-time totals per label set; open usage counts up to now."""
    totals: dict[tuple[str, ...], Totals] = {}
    rows = await session.stream_scalars(select(UsageModel).execution_options(yield_per=1000))
    async for row in rows:
        record = record_of(row)
        key = _labels(record)
        totals.setdefault(key, Totals()).add(
            record, billed_seconds(record.started_at, record.ended_at or now)
        )
    gpu = CounterMetricFamily(
        "flotilla_usage_gpu_seconds",
        "GPU-seconds billed (per second, rounded up)",
        labels=USAGE_LABELS,
    )
    cost = CounterMetricFamily(
        "flotilla_usage_cost_dollars", "Dollars billed at the price in force", labels=USAGE_LABELS
    )
    node = CounterMetricFamily(
        "flotilla_usage_node_seconds",
        "Node-seconds billed (seconds x share of the node)",
        labels=USAGE_LABELS,
    )
    for key, t in sorted(totals.items()):
        gpu.add_metric(key, t.gpu_seconds)
        cost.add_metric(key, t.cost)
        node.add_metric(key, t.node_seconds)
    return [gpu, cost, node]


def _labels(record: UsageRecord) -> tuple[str, ...]:
    return (
        record.user,
        record.project or "",
        record.owner,
        record.instance_type,
        "true" if record.spot else "false",
    )


async def running_gpus_family(session: AsyncSession) -> Metric:
    family = GaugeMetricFamily(
        "flotilla_running_gpus", "GPUs held now by placed runs", labels=("project", "user")
    )
    rows = (
        await session.execute(
            select(RunModel, RecipeModel.project)
            .join(RecipeModel, RecipeModel.id == RunModel.recipe_id)
            .where(RunModel.status.in_(HOLDING))
        )
    ).all()
    tasks = await run_tasks(session, [run.id for run, _ in rows])
    held: dict[tuple[str, str], int] = {}
    for run, project in rows:
        key = (project or "", run.created_by)
        gpus = sum(len(t.gpus or []) for t in current_tasks(run, tasks[run.id]) if _holds(t))
        held[key] = held.get(key, 0) + gpus
    for key, gpus in sorted(held.items()):
        family.add_metric(key, gpus)
    return family


def _holds(task: TaskModel) -> bool:
    return task.node is not None and task.finished_at is None


async def budget_family(session: AsyncSession, now: datetime) -> Metric:
    family = GaugeMetricFamily(
        "flotilla_budget_usage_ratio",
        "Use of a budget's limit (1 = reached); max_gpus counts running and pending runs",
        labels=("scope_kind", "scope_name", "limit"),
    )
    budgets = (await session.execute(select(BudgetModel))).scalars().all()
    for budget in budgets:
        for check in await budget_checks(session, budget, now):
            family.add_metric((budget.scope_kind, budget.scope_name, check.limit), check.ratio)
    return family
