"""The queue and its policy: `GET /api/queue` lists pending runs in order with the
reason each one waits; `GET|PUT /api/scheduler/policy` reads and replaces the
quotas, fair-share weights and preemption rule the scheduler applies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from flotilla.api.base import errors
from flotilla.api.queue import Queue, SchedulerPolicy
from flotilla.server.changes import Change
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.runs import queue as queue_service
from flotilla.server.services.runs.scheduling import load_policy, save_policy

router = APIRouter(prefix="/api", tags=["scheduler"])


@router.get("/scheduler/policy", responses=errors())
async def get_policy(ctx: Ctx, caller: Caller) -> SchedulerPolicy:
    async with ctx.sessions() as session:
        policy = await load_policy(session)
    return SchedulerPolicy(
        user_quota=policy.user_quota,
        project_quota=policy.project_quota,
        user_weight=policy.user_weight,
        preempt_equal_priority=policy.preempt_equal_priority,
    )


@router.put("/scheduler/policy", responses=errors(403, 422))
async def put_policy(ctx: Ctx, caller: Caller, body: SchedulerPolicy) -> SchedulerPolicy:
    caller.require_admin()
    async with ctx.transaction() as session:
        await save_policy(session, body.model_dump(), ctx.clock.now())
        await queue_service.record_policy_change(session, caller.name, ctx.clock.now())
    ctx.changes.announce(Change.QUEUE_POLICY)
    return body


@router.get("/queue", responses=errors(422))
async def get_queue(
    ctx: Ctx,
    caller: Caller,
    limit: Annotated[int, Query(ge=1, le=queue_service.PAGE_MAX)] = queue_service.PAGE_DEFAULT,
    after: Annotated[str | None, Query(max_length=512, description="a page's `next`")] = None,
) -> Queue:
    """Pending runs, oldest first, a page at a time: the caller's and those of the
    projects they may read; positions count everyone's."""
    async with ctx.sessions() as session:
        runs, cursor = await queue_service.queue_page(
            session, caller, ctx.clock.now(), limit, after
        )
    return Queue.model_validate({"runs": runs, "next": cursor})
