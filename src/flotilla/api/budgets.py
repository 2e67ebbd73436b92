"""Budgets (`/api/budgets`): limits on a user's, group's or project's GPUs held and
monthly spending, and each limit's use now."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from flotilla.api.base import ApiModel

ScopeKind = Literal["user", "group", "project"]
LimitName = Literal["max_gpus", "gpu_hours_per_month", "dollars_per_month"]
LimitState = Literal["ok", "warning", "exceeded"]
Amount = Annotated[float | None, Field(ge=0)]


class BudgetLimits(ApiModel):
    """A budget's limits; a limit left out (or null) is not enforced."""

    max_gpus: int | None = Field(
        None, ge=0, description="GPUs held at once by running and pending runs"
    )
    gpu_hours_per_month: Amount = Field(None, description="GPU-hours per calendar month (UTC)")
    dollars_per_month: Amount = Field(None, description="dollars per calendar month (UTC)")
    warn_fraction: float = Field(
        0.8, gt=0, le=1, description="warn on new runs from this fraction of a limit"
    )


class Budget(ApiModel):
    id: str
    scope_kind: ScopeKind
    scope_name: str
    max_gpus: int | None
    gpu_hours_per_month: float | None
    dollars_per_month: float | None
    warn_fraction: float
    updated_at: str


class LimitUse(ApiModel):
    """One limit against use now. GPUs are counts, so `used` and `max` of
    `max_gpus` are integers."""

    limit: LimitName
    used: int | float  # dollars to the cent, others to 4 places
    max: int | float
    ratio: float | None  # used / max; None when over a limit of 0
    state: LimitState


class BudgetStatus(Budget):
    limits: list[LimitUse]  # only the limits it has
    state: LimitState  # its worst limit's


class BudgetList(ApiModel):
    budgets: list[Budget]  # by scope kind, then name


class BudgetStatusList(ApiModel):
    budgets: list[BudgetStatus]
