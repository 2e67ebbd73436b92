"""Saturn's historical pods and logs of a job or a deployment (`GET /api/jobs/{id}/
history|logs`, `GET /api/deployments/{id}/history|logs`): every task of every run,
and the logs of one."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.errors import NotFound
from flotilla.server.context import ServerContext
from flotilla.server.db.models import RecipeModel, RunModel, TaskModel
from flotilla.server.services.identity.secrets import log_redactor
from flotilla.server.services.runs.launch import task_ref
from flotilla.server.services.runs.logs import read_log
from flotilla.server.services.runs.runs import recipe_runs, run_tasks
from flotilla.server.services.views import pod_history_item


async def pod_history(
    session: AsyncSession, recipe: RecipeModel, now: datetime
) -> list[dict[str, Any]]:
    """Every pod (task) of every run, newest first."""
    runs = await recipe_runs(session, recipe.id, limit=1000)
    tasks = await run_tasks(session, [r.id for r in runs])
    return [pod_history_item(t, r, recipe.name, now) for r in runs for t in reversed(tasks[r.id])]


async def pod_logs(
    ctx: ServerContext, session: AsyncSession, recipe: RecipeModel, pod_name: str | None
) -> str:
    """The setup and main logs of the named pod, or of the newest run's first rank;
    empty when there is no run yet."""
    runs = await recipe_runs(session, recipe.id, limit=1000)
    tasks = [t for ts in (await run_tasks(session, [r.id for r in runs])).values() for t in ts]
    task = pick_log_task(tasks, runs, pod_name, f"{recipe.type} {recipe.name}")
    if task is None:
        return ""
    run = next(r for r in runs if r.id == task.run_id)
    redactor = await log_redactor(session, ctx.secret_box, run, recipe)
    files = ctx.backend.log_files(task_ref(task))
    return read_log(files.setup, redactor) + read_log(files.main, redactor)


def pick_log_task(
    tasks: list[TaskModel], runs: Sequence[RunModel], pod_name: str | None, what: str
) -> TaskModel | None:
    """The named pod, or the newest run's first rank."""
    if pod_name is not None:
        tasks = [t for t in tasks if t.name == pod_name]
        if not tasks:
            raise NotFound(f"pod {pod_name!r} of {what}")
    if not tasks:
        return None
    return tasks[0] if pod_name else max(tasks, key=lambda t: (t.run_id == runs[0].id, -t.rank))
