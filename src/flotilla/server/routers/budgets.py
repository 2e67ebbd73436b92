"""Budgets: `GET /api/budgets` (those that apply to the caller; all for admins),
`GET /api/budgets/status` (each with its use now and ok/warning/exceeded),
`GET|PUT|DELETE /api/budgets/{scope_kind}/{scope_name}` (PUT and DELETE are for
platform admins). Enforcement happens when runs are triggered
(`services/budgets.py`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from flotilla.errors import NotFound
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import budgets as budget_service

router = APIRouter(prefix="/api/budgets", tags=["budgets"])

ScopeKind = Literal["user", "group", "project"]
Amount = Annotated[float | None, Field(ge=0)]


class BudgetLimits(BaseModel):
    """A budget's limits; a limit left out (or null) is not enforced."""

    model_config = ConfigDict(extra="forbid")
    max_gpus: int | None = Field(
        None, ge=0, description="GPUs held at once by running and pending runs"
    )
    gpu_hours_per_month: Amount = Field(None, description="GPU-hours per calendar month (UTC)")
    dollars_per_month: Amount = Field(None, description="dollars per calendar month (UTC)")
    warn_fraction: float = Field(
        0.8, gt=0, le=1, description="warn on new runs from this fraction of a limit"
    )


@router.get("")
async def list_budgets(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    async with ctx.sessions() as session:
        budgets = await budget_service.list_budgets(session, caller)
    return {"budgets": [budget_service.budget_view(b) for b in budgets]}


@router.get("/status")
async def budgets_status(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    async with ctx.sessions() as session:
        budgets = await budget_service.list_budgets(session, caller)
        status = await budget_service.budget_status(session, budgets, ctx.clock.now())
    return {"budgets": status}


@router.get("/{scope_kind}/{scope_name}")
async def get_budget(
    ctx: Ctx, caller: Caller, scope_kind: ScopeKind, scope_name: str
) -> dict[str, Any]:
    async with ctx.sessions() as session:
        budget = await budget_service.get_budget(session, caller, scope_kind, scope_name)
        status = await budget_service.budget_status(session, [budget], ctx.clock.now())
    return status[0]


@router.put("/{scope_kind}/{scope_name}")
async def put_budget(
    ctx: Ctx, caller: Caller, scope_kind: ScopeKind, scope_name: str, body: BudgetLimits
) -> dict[str, Any]:
    """Create or replace a scope's budget (limits left out are removed)."""
    caller.require_admin()
    limits = budget_service.Limits(**body.model_dump())
    async with ctx.transaction() as session:
        budget = await budget_service.put_budget(
            session, scope_kind, scope_name, limits, ctx.clock.now()
        )
        return budget_service.budget_view(budget)


@router.delete("/{scope_kind}/{scope_name}", status_code=204)
async def delete_budget(
    ctx: Ctx, caller: Caller, scope_kind: ScopeKind, scope_name: str
) -> Response:
    caller.require_admin()
    async with ctx.transaction() as session:
        budget = await budget_service.find_budget(session, scope_kind, scope_name)
        if budget is None:
            raise NotFound(f"budget for {scope_kind} {scope_name!r}")
        await session.delete(budget)
    return Response(status_code=204)
