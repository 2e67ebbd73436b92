"""Job actions: start, stop, restart, delete, schedule. Each returns quickly: the
reconcilers (woken by the changes the routers announce) do the process work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.cron import validate_schedule
from flotilla.errors import ClientError
from flotilla.recipes.commands import with_packages
from flotilla.server.context import ServerContext
from flotilla.server.db.models import RecipeModel, RunModel
from flotilla.server.identity import Identity
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.events import record_event
from flotilla.server.services.metering.budgets import check_new_run
from flotilla.server.services.runs.runs import create_run, stop_active_runs


async def start_job(
    ctx: ServerContext,
    session: AsyncSession,
    job: RecipeModel,
    caller: Identity,
    trigger: str = "manual",
) -> RunModel:
    run, _ = await trigger_run(session, job, caller.name, trigger, ctx.clock.now())
    return run


async def trigger_run(
    session: AsyncSession, job: RecipeModel, user: str, trigger: str, now: datetime, actor: str = ""
) -> tuple[RunModel, list[str]]:
    """Every way a run starts (start, restart, cron, HTTP trigger) comes through
    here: budgets that apply refuse it (403 budget_exceeded) or warn on it, and the
    warnings are kept as events on the run. `user` is whose budget applies."""
    warnings = await check_new_run(session, job, user, now)
    run = await create_run(
        session, job, trigger=trigger, actor=actor or user, now=now, spec=run_spec(job)
    )
    for warning in warnings:
        record_event(
            session,
            kind="budget_warning",
            message=warning,
            actor=actor or user,
            now=now,
            recipe_id=job.id,
            run_id=run.id,
        )
    return run, warnings


def run_spec(job: RecipeModel) -> dict[str, Any]:
    """The spec a new run gets: the recipe's, with Saturn's `extra_packages`
    installed by its start script (the recipe itself keeps them as written)."""
    spec = dict(job.spec)
    if spec.get("extra_packages"):
        spec["start_script"] = with_packages(spec.get("start_script"), spec["extra_packages"])
    return spec


async def stop_job(
    ctx: ServerContext, session: AsyncSession, job: RecipeModel, caller: Identity
) -> int:
    return await stop_active_runs(
        session, job.id, reason=f"stopped by {caller.name}", actor=caller.name, now=ctx.clock.now()
    )


async def delete_job(
    ctx: ServerContext, session: AsyncSession, job: RecipeModel, caller: Identity
) -> None:
    now = ctx.clock.now()
    await stop_active_runs(
        session, job.id, reason=f"{job.name} deleted", actor=caller.name, now=now
    )
    recipe_service.mark_deleted(session, job, caller.name, now)


async def update_job_spec(
    ctx: ServerContext,
    session: AsyncSession,
    job: RecipeModel,
    changes: dict[str, Any],
    caller: Identity,
) -> None:
    """Change spec fields outside of a full apply (PATCH, `sc schedule CRON`): the
    merged spec is applied like any recipe, so it is validated and versioned alike."""
    for fixed in ("name", "owner"):
        if fixed in changes and changes[fixed] != job.spec.get(fixed):
            raise ClientError(
                f"{fixed} cannot be changed; apply a new recipe instead", "invalid_update", 422
            )
    envelope = {
        "type": job.type,
        "schema_version": job.schema_version,
        "spec": {**job.spec, **changes},
    }
    await recipe_service.apply_recipe(session, caller, envelope, ctx.clock.now())


def set_scheduled(
    ctx: ServerContext, session: AsyncSession, job: RecipeModel, enabled: bool, caller: Identity
) -> None:
    schedule = job.spec.get("schedule")
    if enabled and not schedule:
        raise ClientError(
            f"job {job.name} has no schedule; give one (sc schedule {job.name} '0 * * * *')",
            "no_schedule",
            400,
        )
    now = ctx.clock.now()
    if enabled:
        validate_schedule(str(schedule))
        recipe_service.set_schedule(job, str(schedule), now)
    else:
        job.schedule_enabled = False
        job.next_tick_at = None
    record_event(
        session,
        kind="schedule",
        message="scheduled" if enabled else "unscheduled",
        actor=caller.name,
        now=now,
        recipe_id=job.id,
    )
