"""Reading metered usage: the rows a caller may see in a window, reports grouped
by user, group, project, instance type and day (`GET /api/usage`, Saturn's daily
usage), one run's cost, and one budget scope's use this month.

The rows are written by `reconcilers/metering.py`; the arithmetic is
`core.metering` (per-second billing, open rows counted up to now). Reports are
summed here in Python over the rows of the window, which is simple and exact;
at millions of rows a window a `billed_seconds` column written when a row closes
would let the store do the sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any

from sqlalchemy import ColumnElement, Select, or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.metering import (
    PUBLIC_KEYS,
    Report,
    Totals,
    UsageRecord,
    aggregate,
    billed_seconds,
    cost_of,
    month_start,
)
from flotilla.errors import ClientError
from flotilla.server.db.models import UsageModel
from flotilla.server.identity import Identity
from flotilla.server.services.metering.usage_rows import is_task_row


def parse_moment(value: str | None, what: str) -> datetime | None:
    """An ISO date (midnight UTC) or date-time (UTC when it names no zone)."""
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise ClientError(
            f"{what}: {value!r} is not an ISO date or date-time (2026-11-01, 2026-11-01T12:00:00Z)",
            "invalid_request",
            422,
        ) from e
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """`[since, until)`: by default from the start of this month (UTC) to now."""
    lo = parse_moment(since, "since") or month_start(now)
    hi = parse_moment(until, "until") or now
    if hi <= lo:
        raise ClientError(f"until ({hi.isoformat()}) must be after since ({lo.isoformat()})")
    return lo, hi


def parse_by(value: str) -> list[str]:
    keys = [k.strip() for k in value.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PUBLIC_KEYS]
    if not keys or unknown:
        raise ClientError(
            f"by: {', '.join(unknown) or 'nothing'} is not one of {', '.join(PUBLIC_KEYS)}",
            "invalid_request",
            422,
        )
    if len(set(keys)) != len(keys):
        raise ClientError(f"by: {value!r} repeats a key", "invalid_request", 422)
    return keys


def visible_rows(caller: Identity) -> ColumnElement[bool]:
    """Usage a caller may see: admins everything; others their own, their owners'
    (themselves, their groups) and their projects'."""
    if caller.is_admin:
        return true()
    return or_(
        UsageModel.user == caller.name,
        UsageModel.owner.in_(caller.visible_owners()),
        UsageModel.project.in_(caller.visible_projects()),
    )


def record_of(row: UsageModel) -> UsageRecord:
    return UsageRecord(
        run_id=row.run_id,
        user=row.user,
        owner=row.owner,
        owner_kind=row.owner_kind,
        project=row.project,
        instance_type=row.instance_type,
        gpus=row.gpus,
        spot=row.spot,
        share=row.share,
        price_per_hour=row.price_per_hour,
        started_at=row.started_at,
        ended_at=row.ended_at,
    )


def _in_window(query: Select[Any], since: datetime, until: datetime) -> Select[Any]:
    return query.where(
        UsageModel.started_at < until,
        or_(UsageModel.ended_at.is_(None), UsageModel.ended_at > since),
    )


async def load_records(
    session: AsyncSession,
    since: datetime,
    until: datetime,
    *where: ColumnElement[bool],
) -> list[UsageRecord]:
    query = _in_window(select(UsageModel), since, until).where(*where)
    return [record_of(row) for row in (await session.execute(query)).scalars()]


async def usage_report(
    session: AsyncSession,
    caller: Identity,
    by: Sequence[str],
    since: datetime,
    until: datetime,
    now: datetime,
    user: str | None = None,
    with_idle: bool = True,
) -> Report:
    where = [visible_rows(caller)]
    if user is not None:
        where.append(UsageModel.user == user)
    if not with_idle:
        where.append(is_task_row())
    records = await load_records(session, since, until, *where)
    return aggregate(records, by, now, since, until)


def report_view(report: Report, since: datetime, until: datetime) -> dict[str, Any]:
    return {
        "by": list(report.by),
        "since": since.isoformat(),
        "until": until.isoformat(),
        "rows": report.view_rows(),
        "total": report.total.view(),
    }


def saturn_daily(report: Report) -> list[dict[str, Any]]:
    """Rows of a by (day, user, owner, project, resource) report in Saturn's daily
    usage shape, as saturn-client's `get_org_usage`/`get_user_usage` return them."""
    out = []
    for row in report.view_rows():
        out.append(
            {
                "date": row["day"],
                "user": row["user"],
                "owner": row["owner"],
                "project": row["project"],
                "instance_type": row["instance_type"],
                "gpu_hours": row["gpu_hours"],
                "node_hours": row["node_hours"],
                "cost": row["cost"],
                "spot_cost": row["spot_cost"],
                "on_demand_cost": row["on_demand_cost"],
                "runs": row["runs"],
            }
        )
    return out


async def run_cost(session: AsyncSession, run_id: str, now: datetime) -> dict[str, Any]:
    """What one run cost (all its attempts), with one entry per metered task."""
    rows = (
        (
            await session.execute(
                select(UsageModel).where(UsageModel.run_id == run_id).order_by(UsageModel.id)
            )
        )
        .scalars()
        .all()
    )
    total = Totals()
    tasks = []
    for row in rows:
        seconds = billed_seconds(row.started_at, row.ended_at or now)
        total.add(record_of(row), seconds)
        tasks.append(
            {
                "task_id": row.task_id,
                "node": row.node,
                "instance_type": row.instance_type,
                "gpu_type": row.gpu_type,
                "gpus": row.gpus,
                "spot": row.spot,
                "share": row.share,
                "price_per_hour": row.price_per_hour,
                "started_at": row.started_at.isoformat(),
                "ended_at": row.ended_at.isoformat() if row.ended_at else None,
                "billed_seconds": seconds,
                "cost": round(cost_of(seconds, row.price_per_hour), 6),
            }
        )
    return {"run_id": run_id, "tasks": tasks, **total.view()}


def scope_filter(kind: str, name: str) -> ColumnElement[bool]:
    """Usage a budget of `kind` (user, group, project) named `name` counts."""
    if kind == "user":
        return UsageModel.user == name
    if kind == "group":
        return (UsageModel.owner == name) & (UsageModel.owner_kind == "group")
    if kind == "project":
        return UsageModel.project == name
    raise ValueError(f"unknown budget scope {kind!r}")


async def month_to_date(session: AsyncSession, kind: str, name: str, now: datetime) -> Totals:
    """A scope's use since the start of this month (UTC), open rows up to now."""
    since = month_start(now)
    records = await load_records(session, since, now, scope_filter(kind, name))
    return aggregate(records, (), now, since, now).total
