"""Usage and cost: `GET /api/usage` (grouped by user, group, project, resource
and day, as JSON or CSV), one run's cost, and Saturn's daily usage
(`/api/orgs/{org}/usage/daily`, `/api/orgs/{org}/members/{user}/usage/daily`, what
saturn-client's `get_org_usage` and `get_user_usage` call). Everyone sees the
usage of their own work, their groups' and their projects'; admins see all."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response

from flotilla.api.base import errors
from flotilla.api.usage import RunCost, SaturnDailyUsageList, UsageReport
from flotilla.core.metering import csv_columns, render_csv
from flotilla.errors import NotFound
from flotilla.server.db.models import RecipeModel
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.identity.users import readable_user
from flotilla.server.services.metering import usage as usage_service
from flotilla.server.services.runs.runs import get_run

router = APIRouter(prefix="/api", tags=["usage"])
# The one organisation a Flotilla server is, in Saturn's paths.
ORG = "default"
SATURN_DAILY_KEYS = ("day", "user", "owner", "project", "resource")

By = Annotated[
    str,
    Query(
        description="comma-separated: user, group, project, resource (instance type), day",
        examples=["project,day"],
    ),
]
Since = Annotated[
    str | None,
    Query(description="ISO date or date-time, inclusive (default: start of this month, UTC)"),
]
Until = Annotated[str | None, Query(description="ISO date or date-time, exclusive (default: now)")]
# 400: `until` not after `since`; 422: a bad date, `by` key or parameter.
WINDOW_ERRORS = (400, 422)
# `format=csv` answers the rows as a CSV file instead of the JSON report.
CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
}


@router.get(
    "/usage",
    response_model=UsageReport,
    # Each row carries only the key fields of its `by`, as it always has.
    response_model_exclude_unset=True,
    responses={**CSV, **errors(*WINDOW_ERRORS)},
)
async def get_usage(
    ctx: Ctx,
    caller: Caller,
    by: By = "user",
    since: Since = None,
    until: Until = None,
    format: Literal["json", "csv"] = "json",
    idle: Annotated[
        bool, Query(description="include fleet nodes' idle time (user `idle:<fleet>`)")
    ] = True,
) -> UsageReport | Response:
    """Node-seconds, GPU-hours and dollars, billed per second (rounded up), grouped
    by `by`; open usage counts up to now. Costs are rounded to the cent per row;
    `total` is rounded from the unrounded sums."""
    keys = usage_service.parse_by(by)
    now = ctx.clock.now()
    lo, hi = usage_service.window(since, until, now)
    async with ctx.sessions() as session:
        report = await usage_service.usage_report(
            session, caller, keys, lo, hi, now, with_idle=idle
        )
    view = usage_service.report_view(report, lo, hi)
    if format == "csv":
        text = render_csv(view["rows"], csv_columns(keys))
        name = f"usage-{'-'.join(keys)}-{lo.date()}-{hi.date()}.csv"
        return Response(
            text,
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )
    return UsageReport.model_validate(view)


@router.get("/usage/runs/{run_id}", responses=errors(404))
async def get_run_cost(ctx: Ctx, caller: Caller, run_id: str) -> RunCost:
    """What one run has cost so far, task by task (every attempt)."""
    async with ctx.sessions() as session:
        run = await get_run(session, run_id)
        recipe = await session.get(RecipeModel, run.recipe_id)
        if recipe is None:
            raise NotFound(f"run {run_id}")
        caller.require_read(recipe.owner, recipe.project, f"run {run_id}")
        return RunCost.model_validate(
            await usage_service.run_cost(session, run_id, ctx.clock.now())
        )


@router.get("/orgs/{org}/usage/daily", responses=errors(404, *WINDOW_ERRORS))
async def org_daily_usage(
    ctx: Ctx, caller: Caller, org: str, start: Since = None, end: Until = None
) -> SaturnDailyUsageList:
    """Saturn's daily usage: one row per day, user, owner, project and instance type."""
    _require_org(org)
    return SaturnDailyUsageList.model_validate({"usage": await _daily(ctx, caller, start, end)})


@router.get("/orgs/{org}/members/{user}/usage/daily", responses=errors(404, *WINDOW_ERRORS))
async def member_daily_usage(
    ctx: Ctx, caller: Caller, org: str, user: str, start: Since = None, end: Until = None
) -> SaturnDailyUsageList:
    """One member's daily usage (by user name or id), for those who may see the
    member (themselves, people sharing a group or project, admins); rows are then
    limited to what the caller may see like every usage report."""
    _require_org(org)
    async with ctx.sessions() as session:
        member = await readable_user(session, caller, user)
    return SaturnDailyUsageList.model_validate(
        {"usage": await _daily(ctx, caller, start, end, member.name)}
    )


async def _daily(
    ctx: Ctx, caller: Caller, start: str | None, end: str | None, user: str | None = None
) -> list[dict[str, Any]]:
    now = ctx.clock.now()
    lo, hi = usage_service.window(start, end, now)
    async with ctx.sessions() as session:
        report = await usage_service.usage_report(
            session, caller, SATURN_DAILY_KEYS, lo, hi, now, user
        )
    return usage_service.saturn_daily(report)


def _require_org(org: str) -> None:
    if org != ORG:
        raise NotFound(f"organization {org!r} (this server is the organization {ORG!r})")
