"""Saturn's active-pod API (`/api/active/pods…`): the tasks of runs that are still
active, with their containers `setup` (init) and `main`, and their logs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from flotilla.api.base import errors
from flotilla.api.pods import PodLogs, PodSummary, PodSummaryList
from flotilla.core.redact import Redactor
from flotilla.errors import NotFound
from flotilla.server.db.models import RecipeModel
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services import recipes as recipe_service
from flotilla.server.services.identity.secrets import log_redactor
from flotilla.server.services.runs.launch import task_ref
from flotilla.server.services.runs.logs import check_logs_kept, read_log
from flotilla.server.services.runs.runs import active_runs, find_task_by_name, get_run, run_tasks
from flotilla.server.services.views import pod_summary

router = APIRouter(prefix="/api/active/pods", tags=["pods"])


@router.get("", responses=errors(404, 422), response_model_exclude_unset=True)
async def active_pods(
    ctx: Ctx, caller: Caller, workload_type: str = Query(...), workload_id: str = Query(...)
) -> PodSummaryList:
    async with ctx.sessions() as session:
        job = await recipe_service.get_recipe_by_id(session, workload_type, workload_id, caller)
        runs = await active_runs(session, job.id)
        tasks = await run_tasks(session, [r.id for r in runs])
    pods = [
        pod_summary(t, r, job.name) for r in runs for t in tasks[r.id] if t.attempt == r.attempt
    ]
    return PodSummaryList.model_validate({"pod_summaries": pods, "next_key": None})


async def _find(ctx: Ctx, caller: Caller, name: str) -> tuple[Any, Any, str, Redactor]:
    """The pod (task), its run, its job's name and a redactor for its logs."""
    async with ctx.sessions() as session:
        task = await find_task_by_name(session, name)
        run = await get_run(session, task.run_id)
        recipe = await session.get(RecipeModel, run.recipe_id)
        if recipe is None or not caller.can_read(recipe.owner, recipe.project):
            raise NotFound(f"pod {name!r}")
        redactor = await log_redactor(session, ctx.secret_box, run, recipe)
    return task, run, recipe.name, redactor


@router.get("/{name}", responses=errors(404, 422))
async def pod(ctx: Ctx, caller: Caller, name: str, page_size: int = 1000) -> PodSummary:
    task, run, job_name, redactor = await _find(ctx, caller, name)
    files = ctx.backend.log_files(task_ref(task))
    lines = min(max(page_size, 1), 5000)
    logs = {
        "setup": read_log(files.setup, redactor, lines),
        "main": read_log(files.main, redactor, lines),
    }
    return PodSummary.model_validate(pod_summary(task, run, job_name, logs))


@router.get("/{name}/logs", responses=errors(404, 410, 422))
async def pod_logs(
    ctx: Ctx,
    caller: Caller,
    name: str,
    container_name: str = "main",
    page_size: int = 1000,
    previous: bool = False,
) -> PodLogs:
    task, run, _, redactor = await _find(ctx, caller, name)
    check_logs_kept(run)
    files = ctx.backend.log_files(task_ref(task))
    if container_name not in ("main", "setup"):
        raise NotFound(f"container {container_name!r} (containers: setup, main)")
    path = files.main if container_name == "main" else files.setup
    return PodLogs.model_validate({"logs": read_log(path, redactor, min(max(page_size, 1), 5000))})
