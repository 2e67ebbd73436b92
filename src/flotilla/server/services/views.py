"""The JSON shapes the API returns, in Saturn Cloud's vocabulary where it has one
(recipe envelope with `state`, pods with `pod_name` / `start_time`, PodStatus)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import RunStatus, TaskStatus, saturn_pod_status
from flotilla.recipes.envelope import dump_recipe
from flotilla.server.db.models import RecipeModel, RunModel, TaskModel

API_VERSION = "2026.02.01"  # the Saturn API level we implement (saturn-client checks it)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


async def recipe_states(
    session: AsyncSession, recipes: Sequence[RecipeModel]
) -> dict[str, dict[str, Any]]:
    """Saturn's resource `state` for each recipe, with two queries for any number."""
    ids = [r.id for r in recipes]
    if not ids:
        return {}
    latest_numbers = (
        select(RunModel.recipe_id, func.max(RunModel.number).label("number"))
        .where(RunModel.recipe_id.in_(ids))
        .group_by(RunModel.recipe_id)
        .subquery()
    )
    latest = {
        run.recipe_id: run
        for run in (
            await session.execute(
                select(RunModel).join(
                    latest_numbers,
                    (RunModel.recipe_id == latest_numbers.c.recipe_id)
                    & (RunModel.number == latest_numbers.c.number),
                )
            )
        ).scalars()
    }
    # Counted by the database: a job may have 100,000 runs waiting.
    stopping = RunModel.stop_requested_at.is_not(None)
    active_rows = await session.execute(
        select(RunModel.recipe_id, RunModel.status, stopping, func.count())
        .where(
            RunModel.recipe_id.in_(ids),
            RunModel.status.in_([s.value for s in RunStatus if s.is_active()]),
        )
        .group_by(RunModel.recipe_id, RunModel.status, stopping)
    )
    active: dict[str, list[ActiveRuns]] = {}
    for recipe_id, status, stop_requested, count in active_rows:
        active.setdefault(recipe_id, []).append(ActiveRuns(status, bool(stop_requested), count))
    return {r.id: _state(r, active.get(r.id, []), latest.get(r.id)) for r in recipes}


@dataclass(frozen=True)
class ActiveRuns:
    """How many of a recipe's active runs have one status, stopping or not."""

    status: str
    stopping: bool
    count: int


def _state(recipe: RecipeModel, active: list[ActiveRuns], last: RunModel | None) -> dict[str, Any]:
    return {
        "id": recipe.id,
        "status": _resource_status(active, last),
        "version": recipe.version,
        "created_at": iso(recipe.created_at),
        "updated_at": iso(recipe.updated_at),
        "scheduled": recipe.schedule_enabled,
        "next_scheduled_at": iso(recipe.next_tick_at) if recipe.schedule_enabled else None,
        "active_runs": sum(a.count for a in active),
        "last_run": run_summary(last) if last else None,
    }


def _resource_status(active: list[ActiveRuns], last: RunModel | None) -> str:
    """Saturn's JobStatus: pending, running, stopping, stopped, completed, error."""
    if any(a.status == RunStatus.RUNNING and not a.stopping for a in active):
        return "running"
    if any(a.stopping for a in active):
        return "stopping"
    if active:
        return "pending"
    if last is None or last.status == RunStatus.STOPPED:
        return "stopped"
    if last.status == RunStatus.SUCCEEDED:
        return "completed"
    return "error"


def recipe_view(recipe: RecipeModel, state: dict[str, Any] | None) -> dict[str, Any]:
    return dump_recipe(recipe.type, recipe.spec, state, recipe.schema_version)


def run_summary(run: RunModel) -> dict[str, Any]:
    return {
        "id": run.id,
        "number": run.number,
        "status": run.status,
        "reason": run.reason,
        "exit_code": run.exit_code,
        "queued_at": iso(run.queued_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
    }


def run_view(run: RunModel, tasks: list[TaskModel], job_name: str) -> dict[str, Any]:
    return {
        **run_summary(run),
        "job": job_name,
        "job_id": run.recipe_id,
        "attempt": run.attempt,
        "trigger": run.trigger,
        "created_by": run.created_by,
        "stop_requested": run.stop_requested_at is not None,
        "stop_reason": run.stop_reason,
        "tasks": [task_view(t) for t in tasks],
    }


def task_view(task: TaskModel) -> dict[str, Any]:
    return {
        "name": task.name,
        "rank": task.rank,
        "attempt": task.attempt,
        "status": task.status,
        "node": task.node,
        "gpus": task.gpus,
        "pid": task.pid,
        "exit_code": task.exit_code,
        "message": task.message,
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
    }


def pod_history_item(
    task: TaskModel, run: RunModel, job_name: str, now: datetime
) -> dict[str, Any]:
    status = saturn_pod_status(TaskStatus(task.status), run.stop_requested_at is not None)
    return {
        "pod_name": task.name,
        "status": status,
        "start_time": iso(task.started_at or run.queued_at),
        "end_time": iso(task.finished_at),
        "last_seen": iso(task.finished_at or now),
        "label_job_name": job_name,
        "run_id": run.id,
        "exit_code": task.exit_code,
    }


def pod_summary(
    task: TaskModel, run: RunModel, job_name: str, logs: dict[str, str] | None = None
) -> dict[str, Any]:
    """Saturn's PodRuntimeSummary for one task; containers are `setup` (init) and
    `main`. With `logs`, each container carries its log text."""
    task_status = TaskStatus(task.status)
    status = saturn_pod_status(task_status, run.stop_requested_at is not None)
    main_status = {
        TaskStatus.PENDING: "waiting",
        TaskStatus.STARTING: "waiting",
        TaskStatus.RUNNING: "running",
        TaskStatus.SUCCEEDED: "completed",
    }.get(task_status, "error" if task_status != TaskStatus.STOPPED else "completed")
    setup_status = (
        "running"
        if task_status == TaskStatus.STARTING
        else ("waiting" if task_status == TaskStatus.PENDING else "completed")
    )
    labels = {
        "saturncloud.io/resource-id": run.recipe_id,
        "job-name": job_name,
        "flotilla/run-id": run.id,
    }
    common = {
        "namespace": "flotilla",
        "uid": task.id,
        "labels": labels,
        "annotations": {},
        "conditions": [],
    }
    return {
        "name": task.name,
        **common,
        "controller_uid": run.id,
        "controller_kind": "Run",
        "started_at": iso(task.started_at),
        "deleted_at": None,
        "completed_at": iso(task.finished_at),
        "status": status,
        "node_name": task.node,
        "reason": task.message or None,
        "init_container_summaries": [
            _container("setup", setup_status, None, None, common, (logs or {}).get("setup"))
        ],
        "container_summaries": [
            _container(
                "main",
                main_status,
                task.exit_code,
                iso(task.finished_at),
                common,
                (logs or {}).get("main"),
            )
        ],
    }


def _container(
    name: str,
    status: str,
    exit_code: int | None,
    finished_at: str | None,
    common: dict[str, Any],
    logs: str | None,
) -> dict[str, Any]:
    out = {
        **common,
        "name": name,
        "controller_uid": None,
        "controller_kind": None,
        "started_at": None,
        "deleted_at": None,
        "status": status,
        "finished_at": finished_at,
        "restart_policy": "Never",
        "image_pulled": True,
        "exit_code": exit_code,
        "reason": None,
        "previous": None,
    }
    if logs is not None:
        out["logs"] = logs
    return out
