"""Runs by id: details, events, and logs (whole, or followed live)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.api.base import errors
from flotilla.api.runs import Run, RunEvents
from flotilla.core.status import RunStatus
from flotilla.errors import NotFound
from flotilla.server.db.models import RecipeModel, RunModel
from flotilla.server.identity import Identity
from flotilla.server.routers.deps import Caller, Ctx
from flotilla.server.services.events import event_view, run_events
from flotilla.server.services.identity.secrets import log_redactor
from flotilla.server.services.runs.launch import task_ref
from flotilla.server.services.runs.logs import check_logs_kept, follow_log, read_log
from flotilla.server.services.runs.runs import get_run, run_tasks
from flotilla.server.services.views import run_view

router = APIRouter(prefix="/api/runs", tags=["runs"])


async def readable_run(
    session: AsyncSession, caller: Identity, run_id: str
) -> tuple[RunModel, RecipeModel]:
    """The run and its recipe, or 404 when the caller may not see it."""
    run = await get_run(session, run_id)
    recipe = await session.get(RecipeModel, run.recipe_id)
    if recipe is None or not caller.can_read(recipe.owner, recipe.project):
        raise NotFound(f"run {run_id}")
    return run, recipe


# The log text, whole or streamed. `response_class=Response` (no media type of its
# own) keeps the errors documented as the JSON they are, not as text.
LOG_TEXT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the log text (streamed until the run ends with `follow`)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


@router.get("/{run_id}", responses=errors(404))
async def get_run_view(ctx: Ctx, caller: Caller, run_id: str) -> Run:
    async with ctx.sessions() as session:
        run, recipe = await readable_run(session, caller, run_id)
        tasks = (await run_tasks(session, [run.id]))[run.id]
    return Run.model_validate(run_view(run, tasks, recipe.name))


@router.get("/{run_id}/events", responses=errors(404))
async def get_run_events(ctx: Ctx, caller: Caller, run_id: str) -> RunEvents:
    async with ctx.sessions() as session:
        await readable_run(session, caller, run_id)
        events = await run_events(session, run_id)
    return RunEvents.model_validate({"events": [event_view(e) for e in events]})


@router.get(
    "/{run_id}/logs",
    response_model=None,
    response_class=Response,
    responses={**LOG_TEXT, **errors(404, 410, 422)},
)
async def get_run_logs(
    ctx: Ctx,
    caller: Caller,
    run_id: str,
    rank: int = 0,
    container: str = "main",
    follow: bool = False,
    attempt: int | None = None,
) -> PlainTextResponse | StreamingResponse:
    """The logs of one task (`rank`) of the run's current (or given) attempt.
    `container=setup` gives the clone/start-script output. With `follow`, the
    response streams until the run has finished."""
    async with ctx.sessions() as session:
        run, recipe = await readable_run(session, caller, run_id)
        tasks = (await run_tasks(session, [run.id]))[run.id]
        redactor = await log_redactor(session, ctx.secret_box, run, recipe)
    check_logs_kept(run)
    wanted = run.attempt if attempt is None else attempt
    match = [t for t in tasks if t.rank == rank and t.attempt == wanted]
    if not match:
        raise NotFound(f"rank {rank} (attempt {wanted}) of run {run_id}")
    if container not in ("main", "setup"):
        raise NotFound(f"container {container!r} (containers: setup, main)")
    files = ctx.backend.log_files(task_ref(match[0]))
    path = files.main if container == "main" else files.setup
    if not follow:
        return PlainTextResponse(read_log(path, redactor))

    async def finished() -> bool:
        async with ctx.sessions() as session:
            current = await session.get(RunModel, run_id)
        return (
            current is None or current.attempt != wanted or RunStatus(current.status).is_finished()
        )

    async def stream() -> AsyncIterator[bytes]:
        async for chunk in follow_log(path, finished, redactor):
            yield chunk

    return StreamingResponse(stream(), media_type="text/plain")
