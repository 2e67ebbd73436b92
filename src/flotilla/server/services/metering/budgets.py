"""Budgets: limits on what a user, a group or a project may spend, and the check
that applies them when a run is triggered (`services/runs/jobs.py:start_job`).

A budget may cap GPUs held at once (`max_gpus`, counting running and pending
runs), GPU-hours and dollars per calendar month (UTC, open usage counted up to
now). When a run is triggered, every budget that applies to it is evaluated: its
user's, its owner's when the owner is a group, its project's. A limit reached
refuses the run with 403 `budget_exceeded` (a policy refusal, like a quota: the
same request succeeds once the month rolls over, runs finish or an admin raises
the budget). Use at or above `warn_fraction` of a limit lets the run start and
records a `budget_warning` event on it. Running work is never stopped by a budget.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.metering import Totals, cents
from flotilla.core.status import RunStatus
from flotilla.core.units import parse_gpu
from flotilla.errors import ClientError, FieldProblem, NotFound
from flotilla.server.db.models import (
    BudgetModel,
    GroupModel,
    ProjectModel,
    RecipeModel,
    RunModel,
    UserModel,
)
from flotilla.server.identity import Identity
from flotilla.server.services.metering.usage import month_to_date

SCOPE_KINDS = ("user", "group", "project")
ACTIVE = [s.value for s in RunStatus if s.is_active()]
REFUSED = 403


@dataclass(frozen=True)
class Limits:
    max_gpus: int | None = None
    gpu_hours_per_month: float | None = None
    dollars_per_month: float | None = None
    warn_fraction: float = 0.8


@dataclass(frozen=True)
class LimitCheck:
    """One limit of one budget against current use."""

    limit: str  # max_gpus, gpu_hours_per_month, dollars_per_month
    used: float
    maximum: float
    warn_fraction: float

    @property
    def ratio(self) -> float:
        if self.maximum > 0:
            return self.used / self.maximum
        return math.inf if self.used > 0 else 1.0

    @property
    def state(self) -> str:
        # Holding exactly max_gpus is full, not over: only more GPUs are refused.
        over = self.ratio > 1 if self.limit == "max_gpus" else self.ratio >= 1
        if over:
            return "exceeded"
        return "warning" if self.ratio >= self.warn_fraction else "ok"

    def view(self) -> dict[str, Any]:
        used = cents(self.used) if self.limit == "dollars_per_month" else round(self.used, 4)
        ratio = self.ratio
        return {
            "limit": self.limit,
            "used": used,
            "max": self.maximum,
            "ratio": round(ratio, 4) if math.isfinite(ratio) else None,
            "state": self.state,
        }


def budget_view(budget: BudgetModel) -> dict[str, Any]:
    return {
        "id": budget.id,
        "scope_kind": budget.scope_kind,
        "scope_name": budget.scope_name,
        "max_gpus": budget.max_gpus,
        "gpu_hours_per_month": budget.gpu_hours_per_month,
        "dollars_per_month": budget.dollars_per_month,
        "warn_fraction": budget.warn_fraction,
        "updated_at": budget.updated_at.isoformat(),
    }


def _applies_to(caller: Identity) -> ColumnElement[bool]:
    return or_(
        (BudgetModel.scope_kind == "user") & (BudgetModel.scope_name == caller.name),
        (BudgetModel.scope_kind == "group") & BudgetModel.scope_name.in_(caller.groups),
        (BudgetModel.scope_kind == "project")
        & BudgetModel.scope_name.in_(caller.visible_projects()),
    )


async def list_budgets(session: AsyncSession, caller: Identity) -> Sequence[BudgetModel]:
    """Every budget for admins; the ones that apply to the caller for others."""
    query = select(BudgetModel).order_by(BudgetModel.scope_kind, BudgetModel.scope_name)
    if not caller.is_admin:
        query = query.where(_applies_to(caller))
    return (await session.execute(query)).scalars().all()


async def find_budget(session: AsyncSession, kind: str, name: str) -> BudgetModel | None:
    query = select(BudgetModel).where(
        BudgetModel.scope_kind == kind, BudgetModel.scope_name == name
    )
    return (await session.execute(query)).scalars().first()


async def get_budget(session: AsyncSession, caller: Identity, kind: str, name: str) -> BudgetModel:
    budget = await find_budget(session, kind, name)
    if budget is None or not (caller.is_admin or _may_see(caller, kind, name)):
        raise NotFound(f"budget for {kind} {name!r}")
    return budget


def _may_see(caller: Identity, kind: str, name: str) -> bool:
    if kind == "user":
        return name == caller.name
    if kind == "group":
        return name in caller.groups
    return name in caller.visible_projects()


async def put_budget(
    session: AsyncSession, kind: str, name: str, limits: Limits, now: datetime
) -> BudgetModel:
    """Create or replace the budget of a scope (limits not given are removed)."""
    await _require_scope(session, kind, name)
    budget = await find_budget(session, kind, name)
    if budget is None:
        budget = BudgetModel(id=uuid.uuid4().hex, scope_kind=kind, scope_name=name)
        session.add(budget)
    budget.max_gpus = limits.max_gpus
    budget.gpu_hours_per_month = limits.gpu_hours_per_month
    budget.dollars_per_month = limits.dollars_per_month
    budget.warn_fraction = limits.warn_fraction
    budget.updated_at = now
    return budget


async def _require_scope(session: AsyncSession, kind: str, name: str) -> None:
    column = {"user": UserModel.name, "group": GroupModel.name, "project": ProjectModel.name}[kind]
    found = (await session.execute(select(column).where(column == name))).scalar()
    if found is None:
        raise ClientError(
            f"no {kind} named {name!r}",
            "invalid_request",
            422,
            [FieldProblem("scope_name", f"no {kind} named {name!r}")],
        )


def run_gpus(spec: dict[str, Any]) -> int:
    """GPUs a run of `spec` holds: scale x GPUs per task."""
    resources = spec.get("resources") or {}
    gpu = resources.get("gpu") if isinstance(resources, dict) else None
    per_task = parse_gpu(gpu).count if gpu is not None else 0
    return int(spec.get("scale", 1)) * per_task


async def gpus_held(session: AsyncSession, kind: str, name: str) -> int:
    """GPUs of a scope's running and pending runs. A run being stopped for good no
    longer counts; one evicted to be requeued does (it comes back)."""
    query = (
        select(RunModel.spec)
        .join(RecipeModel, RecipeModel.id == RunModel.recipe_id)
        .where(
            RunModel.status.in_(ACTIVE),
            or_(RunModel.stop_requested_at.is_(None), RunModel.requeue_reason.is_not(None)),
        )
    )
    if kind == "user":
        query = query.where(RunModel.created_by == name)
    elif kind == "group":
        query = query.where(RecipeModel.owner == name)
    else:
        query = query.where(RecipeModel.project == name)
    return sum(run_gpus(spec) for spec in (await session.execute(query)).scalars())


def monthly_checks(budget: BudgetModel, used: Totals) -> list[LimitCheck]:
    checks = []
    if budget.dollars_per_month is not None:
        checks.append(
            LimitCheck(
                "dollars_per_month", used.cost, budget.dollars_per_month, budget.warn_fraction
            )
        )
    if budget.gpu_hours_per_month is not None:
        checks.append(
            LimitCheck(
                "gpu_hours_per_month",
                used.gpu_hours,
                budget.gpu_hours_per_month,
                budget.warn_fraction,
            )
        )
    return checks


async def budget_checks(
    session: AsyncSession, budget: BudgetModel, now: datetime, adding_gpus: int = 0
) -> list[LimitCheck]:
    """Every limit of `budget` against use now (plus `adding_gpus` for max_gpus)."""
    checks = []
    if budget.max_gpus is not None:
        held = await gpus_held(session, budget.scope_kind, budget.scope_name)
        checks.append(
            LimitCheck("max_gpus", held + adding_gpus, budget.max_gpus, budget.warn_fraction)
        )
    if budget.dollars_per_month is not None or budget.gpu_hours_per_month is not None:
        used = await month_to_date(session, budget.scope_kind, budget.scope_name, now)
        checks += monthly_checks(budget, used)
    return checks


async def budget_status(
    session: AsyncSession, budgets: Sequence[BudgetModel], now: datetime
) -> list[dict[str, Any]]:
    out = []
    for budget in budgets:
        checks = await budget_checks(session, budget, now)
        states = [c.state for c in checks]
        state = next((s for s in ("exceeded", "warning") if s in states), "ok")
        out.append({**budget_view(budget), "limits": [c.view() for c in checks], "state": state})
    return out


async def applicable_budgets(
    session: AsyncSession, recipe: RecipeModel, user: str
) -> Sequence[BudgetModel]:
    """The budgets a run of `recipe` triggered by `user` counts against."""
    scopes = [("user", user)]
    is_group = (
        await session.execute(select(GroupModel.id).where(GroupModel.name == recipe.owner))
    ).scalar() is not None
    if is_group:
        scopes.append(("group", recipe.owner))
    if recipe.project:
        scopes.append(("project", recipe.project))
    query = select(BudgetModel).where(
        or_(*[(BudgetModel.scope_kind == k) & (BudgetModel.scope_name == n) for k, n in scopes])
    )
    return (await session.execute(query)).scalars().all()


async def check_new_run(
    session: AsyncSession, recipe: RecipeModel, user: str, now: datetime
) -> list[str]:
    """Refuse a new run of `recipe` (ClientError `budget_exceeded`) if a budget that
    applies is used up; otherwise the warnings for budgets nearly used up."""
    adding = run_gpus(recipe.spec)
    problems: list[str] = []
    warnings: list[str] = []
    for budget in await applicable_budgets(session, recipe, user):
        who = f"{budget.scope_kind} {budget.scope_name}"
        for check in await budget_checks(session, budget, now, adding):
            if check.limit == "max_gpus" and adding == 0:
                continue  # a run without GPUs adds nothing to hold
            if check.state == "exceeded":
                problems.append(_refusal(who, check, adding))
            elif check.state == "warning":
                warnings.append(_warning(who, check))
    if problems:
        raise ClientError("; ".join(problems), "budget_exceeded", REFUSED)
    return warnings


def _amount(check: LimitCheck, value: float) -> str:
    if check.limit == "dollars_per_month":
        return f"${cents(value):,.2f}"
    if check.limit == "gpu_hours_per_month":
        return f"{value:,.2f} GPU-hours"
    return f"{value:g} GPUs"


def _refusal(who: str, check: LimitCheck, adding: int) -> str:
    if check.limit == "max_gpus":
        held = int(check.used) - adding
        return (
            f"{who} holds {held} GPUs in running and pending runs and this run needs "
            f"{adding} more, over its limit of {check.maximum:g} GPUs at once"
        )
    return (
        f"{who} has used {_amount(check, check.used)} of its {_amount(check, check.maximum)} "
        "monthly budget: new runs are refused until the month ends or the budget is raised"
    )


def _warning(who: str, check: LimitCheck) -> str:
    share = f"{check.ratio:.0%}"
    if check.limit == "max_gpus":
        return f"{who} will hold {check.used:g} of its {check.maximum:g} GPUs ({share})"
    return (
        f"{who} has used {_amount(check, check.used)} of its {_amount(check, check.maximum)} "
        f"monthly budget ({share})"
    )
