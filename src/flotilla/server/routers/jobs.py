"""Job actions in Saturn's shape: /api/jobs/{id}/start|stop|restart|schedule|...,
run history, pods and logs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.api.base import errors
from flotilla.api.jobs import (
    CronScheduleOptions,
    Job,
    JobList,
    JobRestarted,
    JobRunList,
    JobSchedule,
    JobStarted,
    JobStopped,
    JobUpdate,
)
from flotilla.api.pods import PodHistory, PodLogs
from flotilla.errors import NotFound
from flotilla.recipes.types import JOB
from flotilla.server.changes import Change
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import idempotency
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.runs import jobs as job_service
from flotilla.server.services.runs.recipe_pods import pod_history, pod_logs
from flotilla.server.services.runs.runs import recipe_runs, request_stop, run_named, run_tasks
from flotilla.server.services.views import (
    recipe_states,
    recipe_view,
    run_summary,
    run_view,
)

router = APIRouter(prefix="/api/jobs", tags=["jobs"])
# A start's `Idempotency-Key` header (`services/idempotency.py`).
IdempotencyKey = Annotated[str | None, Header(alias=idempotency.HEADER)]


async def _view(
    ctx: Ctx, caller: Caller, job_id: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    async with ctx.sessions() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller)
        states = await recipe_states(session, [job])
    return {**recipe_view(job, states[job.id]), **(extra or {})}


@router.get("", responses=errors())
async def list_jobs(ctx: Ctx, caller: Caller, owner_name: str | None = None) -> JobList:
    async with ctx.sessions() as session:
        jobs = await recipe_service.list_recipes(session, caller, JOB, owner_name)
        states = await recipe_states(session, jobs)
    views = [recipe_view(j, states[j.id]) for j in jobs]
    return JobList.model_validate({"jobs": views, "next_key": None})


@router.get("/{job_id}", responses=errors(404))
async def get_job(ctx: Ctx, caller: Caller, job_id: str) -> Job:
    return Job.model_validate(await _view(ctx, caller, job_id))


@router.get("/{job_id}/recipe", responses=errors(404))
async def get_job_recipe(ctx: Ctx, caller: Caller, job_id: str) -> Job:
    return Job.model_validate(await _view(ctx, caller, job_id))


@router.patch("/{job_id}", responses=errors(403, 404, 409, 422))
async def update_job(ctx: Ctx, caller: Caller, job_id: str, payload: JobUpdate) -> Job:
    """Saturn's PATCH: `cron_schedule_options` {schedule, concurrency_policy,
    backoff_limit} map to the recipe's schedule, concurrency_policy and retries;
    other spec fields are merged into the spec and validated like an apply."""
    changes: dict[str, Any] = dict(payload.model_extra or {})
    if payload.cron_schedule_options is not None:
        changes.update(_cron_changes(payload.cron_schedule_options))
    async with ctx.transaction() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller, write=True)
        await job_service.update_job_spec(ctx, session, job, changes, caller)
        schedule = recipe_service.enabled_schedule(job)
        recipe_service.check_schedule(schedule, ctx.settings.min_schedule_interval)
    ctx.changes.announce(Change.SCHEDULES)
    return Job.model_validate(await _view(ctx, caller, job_id))


def _cron_changes(options: CronScheduleOptions) -> dict[str, Any]:
    """The spec fields Saturn's cron options set: only those it gave."""
    given = options.model_dump(exclude_unset=True)
    renamed = {"backoff_limit": "retries"}
    return {renamed.get(field, field): value for field, value in given.items()}


@router.delete("/{job_id}", status_code=204, responses=errors(403, 404, 409))
async def delete_job(ctx: Ctx, caller: Caller, job_id: str) -> Response:
    async with ctx.transaction() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller, write=True)
        await job_service.delete_job(ctx, session, job, caller)
    ctx.changes.announce(Change.STOPS_REQUESTED)
    return Response(status_code=204)


async def _keyed(
    request: Request, caller: Caller, key: str | None
) -> idempotency.KeyedRequest | None:
    return idempotency.keyed_request(
        caller.user_id,
        key,
        request.method,
        request.url.path,
        request.url.query,
        await request.body(),
    )


@router.post("/{job_id}/start", responses=errors(403, 404, 409, 422))
async def start_job(
    ctx: Ctx, caller: Caller, job_id: str, request: Request, idempotency_key: IdempotencyKey = None
) -> JobStarted:
    """Trigger a run. Returns once the run is queued; never waits for it to finish.
    With an `Idempotency-Key` header, a repeat answers as the first did (the same
    run) and starts nothing (`services/idempotency.py`)."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller, write=True)
        run, warnings = await job_service.trigger_run(
            session, job, caller.name, "manual", ctx.clock.now()
        )
        # `warnings`: budgets nearly used up (also kept as events on the run).
        summary = run_summary(run)
        return {"id": job_id, "run": summary, "status": "pending", "warnings": warnings}

    answer = await idempotency.once(ctx, await _keyed(request, caller, idempotency_key), work)
    ctx.changes.announce(Change.RUNS_QUEUED)
    return JobStarted.model_validate(answer)


@router.post("/{job_id}/stop", responses=errors(403, 404, 409))
async def stop_job(ctx: Ctx, caller: Caller, job_id: str) -> JobStopped:
    async with ctx.transaction() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller, write=True)
        stopped = await job_service.stop_job(ctx, session, job, caller)
    ctx.changes.announce(Change.STOPS_REQUESTED)
    return JobStopped.model_validate(await _view(ctx, caller, job_id, {"stopped_runs": stopped}))


@router.post("/{job_id}/stop/{run_name}", responses=errors(403, 404, 409))
async def stop_run(ctx: Ctx, caller: Caller, job_id: str, run_name: str) -> Job:
    """Stop one run, named by its id, its number or one of its pods."""
    async with ctx.transaction() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller, write=True)
        run = await run_named(session, job.id, run_name)
        if run is None:
            raise NotFound(f"run {run_name!r} of job {job.name}")
        request_stop(
            session,
            run,
            reason=f"stopped by {caller.name}",
            actor=caller.name,
            now=ctx.clock.now(),
        )
    ctx.changes.announce(Change.STOPS_REQUESTED)
    return Job.model_validate(await _view(ctx, caller, job_id))


@router.post("/{job_id}/restart", responses=errors(403, 404, 409, 422))
async def restart_job(
    ctx: Ctx, caller: Caller, job_id: str, request: Request, idempotency_key: IdempotencyKey = None
) -> JobRestarted:
    """Stop the active runs and start a new one; idempotent with a key, as start."""

    async def work(session: AsyncSession) -> dict[str, Any]:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller, write=True)
        await job_service.stop_job(ctx, session, job, caller)
        run = await job_service.start_job(ctx, session, job, caller, trigger="restart")
        states = await recipe_states(session, [job])
        return {**recipe_view(job, states[job.id]), "run": run_summary(run)}

    answer = await idempotency.once(ctx, await _keyed(request, caller, idempotency_key), work)
    ctx.changes.announce(Change.STOPS_REQUESTED, Change.RUNS_QUEUED)
    return JobRestarted.model_validate(answer)


@router.post("/{job_id}/schedule", responses=errors(403, 404, 409, 422))
async def schedule_job(
    ctx: Ctx, caller: Caller, job_id: str, payload: JobSchedule | None = None
) -> Job:
    async with ctx.transaction() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller, write=True)
        if payload is not None and (changes := _cron_changes(payload)):
            await job_service.update_job_spec(ctx, session, job, changes, caller)
        # Before enabling it: also refuses a schedule stored before the rules tightened.
        schedule = job.spec.get("schedule")
        recipe_service.check_schedule(
            str(schedule) if schedule else None, ctx.settings.min_schedule_interval
        )
        job_service.set_scheduled(ctx, session, job, True, caller)
    ctx.changes.announce(Change.SCHEDULES)
    return Job.model_validate(await _view(ctx, caller, job_id))


@router.post("/{job_id}/unschedule", responses=errors(403, 404, 409))
async def unschedule_job(ctx: Ctx, caller: Caller, job_id: str) -> Job:
    async with ctx.transaction() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller, write=True)
        job_service.set_scheduled(ctx, session, job, False, caller)
    return Job.model_validate(await _view(ctx, caller, job_id))


@router.get("/{job_id}/runs", responses=errors(404, 422))
async def list_runs(ctx: Ctx, caller: Caller, job_id: str, limit: int = 100) -> JobRunList:
    async with ctx.sessions() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller)
        runs = await recipe_runs(session, job.id, limit=min(max(limit, 1), 1000))
        tasks = await run_tasks(session, [r.id for r in runs])
    return JobRunList.model_validate({"runs": [run_view(r, tasks[r.id], job.name) for r in runs]})


@router.get("/{job_id}/history", responses=errors(404))
async def history(ctx: Ctx, caller: Caller, job_id: str) -> PodHistory:
    """Every pod (task) of every run, newest first (Saturn's historical pods)."""
    async with ctx.sessions() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller)
        return PodHistory.model_validate({"pods": await pod_history(session, job, ctx.clock.now())})


@router.get("/{job_id}/logs", responses=errors(404))
async def job_logs(ctx: Ctx, caller: Caller, job_id: str, pod_name: str | None = None) -> PodLogs:
    async with ctx.sessions() as session:
        job = await recipe_service.get_recipe_by_id(session, JOB, job_id, caller)
        return PodLogs.model_validate({"logs": await pod_logs(ctx, session, job, pod_name)})
