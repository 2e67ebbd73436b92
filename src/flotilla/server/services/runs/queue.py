"""The pending queue as users see it: every waiting run, oldest first, with its
shape, priority and the scheduler's reason for not starting it yet."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import RunStatus
from flotilla.server.db.models import RecipeModel, RunModel
from flotilla.server.services.events import record_event


async def queue_view(session: AsyncSession, now: datetime) -> list[dict[str, Any]]:
    rows = await session.execute(
        select(RunModel, RecipeModel)
        .join(RecipeModel, RecipeModel.id == RunModel.recipe_id)
        .where(RunModel.status == RunStatus.PENDING.value)
        .order_by(RunModel.queued_at, RunModel.id)
    )
    out = []
    for position, (run, recipe) in enumerate(rows, start=1):
        resources = run.spec.get("resources") or {}
        out.append(
            {
                "position": position,
                "run_id": run.id,
                "job": recipe.name,
                "job_id": recipe.id,
                "number": run.number,
                "attempt": run.attempt,
                "owner": recipe.owner,
                "recipe_project": recipe.project,
                "project": run.spec.get("project", "default"),
                "priority": run.spec.get("priority", 0),
                "scale": run.spec.get("scale", 1),
                "gpu": resources.get("gpu"),
                "spot": run.spec.get("use_spot_instance", False),
                "queued_at": run.queued_at.isoformat(),
                "waiting_seconds": round((now - run.queued_at).total_seconds(), 1),
                "reason": run.reason,
            }
        )
    return out


async def record_policy_change(session: AsyncSession, actor: str, now: datetime) -> None:
    record_event(session, kind="policy", message="scheduler policy replaced", actor=actor, now=now)
