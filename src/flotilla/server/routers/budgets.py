"""Budgets: `GET /api/budgets` (those that apply to the caller; all for admins),
`GET /api/budgets/status` (each with its use now and ok/warning/exceeded),
`GET|PUT|DELETE /api/budgets/{scope_kind}/{scope_name}` (PUT and DELETE are for
platform admins). Enforcement happens when runs are triggered
(`services/metering/budgets.py`)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from flotilla.api.base import errors
from flotilla.api.budgets import (
    Budget,
    BudgetLimits,
    BudgetList,
    BudgetStatus,
    BudgetStatusList,
    ScopeKind,
)
from flotilla.errors import NotFound
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.metering import budgets as budget_service

router = APIRouter(prefix="/api/budgets", tags=["budgets"])


@router.get("", responses=errors())
async def list_budgets(ctx: Ctx, caller: Caller) -> BudgetList:
    async with ctx.sessions() as session:
        budgets = await budget_service.list_budgets(session, caller)
    return BudgetList.model_validate({"budgets": [budget_service.budget_view(b) for b in budgets]})


@router.get("/status", responses=errors())
async def budgets_status(ctx: Ctx, caller: Caller) -> BudgetStatusList:
    async with ctx.sessions() as session:
        budgets = await budget_service.list_budgets(session, caller)
        status = await budget_service.budget_status(session, budgets, ctx.clock.now())
    return BudgetStatusList.model_validate({"budgets": status})


@router.get("/{scope_kind}/{scope_name}", responses=errors(404, 422))
async def get_budget(
    ctx: Ctx, caller: Caller, scope_kind: ScopeKind, scope_name: str
) -> BudgetStatus:
    async with ctx.sessions() as session:
        budget = await budget_service.get_budget(session, caller, scope_kind, scope_name)
        status = await budget_service.budget_status(session, [budget], ctx.clock.now())
    return BudgetStatus.model_validate(status[0])


@router.put("/{scope_kind}/{scope_name}", responses=errors(403, 422))
async def put_budget(
    ctx: Ctx, caller: Caller, scope_kind: ScopeKind, scope_name: str, body: BudgetLimits
) -> Budget:
    """Create or replace a scope's budget (limits left out are removed). A scope
    that does not exist is a 422 naming `scope_name`."""
    caller.require_admin()
    limits = budget_service.Limits(**body.model_dump())
    async with ctx.transaction() as session:
        budget = await budget_service.put_budget(
            session, scope_kind, scope_name, limits, ctx.clock.now()
        )
        return Budget.model_validate(budget_service.budget_view(budget))


@router.delete("/{scope_kind}/{scope_name}", status_code=204, responses=errors(403, 404, 422))
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
