"""The queue and its policy: `GET /api/queue` lists pending runs in order with the
reason each one waits; `GET|PUT /api/scheduler/policy` reads and replaces the
quotas, fair-share weights and preemption rule the scheduler applies."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import queue as queue_service
from flotilla.server.services.scheduling import load_policy, save_policy

router = APIRouter(prefix="/api", tags=["scheduler"])

Gpus = Annotated[int, Field(ge=0)]
Weight = Annotated[float, Field(gt=0)]


class SchedulerPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_quota: dict[str, Gpus] = Field(
        default_factory=dict, description="GPUs a user may hold at once (absent: no limit)"
    )
    project_quota: dict[str, Gpus] = Field(
        default_factory=dict, description="GPUs a project may hold at once"
    )
    user_weight: dict[str, Weight] = Field(
        default_factory=dict, description="fair-share weight per user (default 1)"
    )
    preempt_equal_priority: bool = Field(
        False, description="let runs preempt on-demand runs of the same priority"
    )


@router.get("/scheduler/policy")
async def get_policy(ctx: Ctx, caller: Caller) -> SchedulerPolicy:
    async with ctx.sessions() as session:
        policy = await load_policy(session)
    return SchedulerPolicy(
        user_quota=policy.user_quota,
        project_quota=policy.project_quota,
        user_weight=policy.user_weight,
        preempt_equal_priority=policy.preempt_equal_priority,
    )


@router.put("/scheduler/policy")
async def put_policy(ctx: Ctx, caller: Caller, body: SchedulerPolicy) -> SchedulerPolicy:
    caller.require_admin()
    async with ctx.transaction() as session:
        await save_policy(session, body.model_dump(), ctx.clock.now())
        await queue_service.record_policy_change(session, caller.name, ctx.clock.now())
    ctx.wakers.scheduler.set()
    return body


@router.get("/queue")
async def get_queue(ctx: Ctx, caller: Caller) -> dict[str, Any]:
    async with ctx.sessions() as session:
        runs = await queue_service.queue_view(session, ctx.clock.now())
    # Positions count everyone's runs; the caller sees only the runs they may read.
    return {"runs": [r for r in runs if caller.can_read(r["owner"], r["recipe_project"])]}
