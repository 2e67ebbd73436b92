"""Runs: creating them, moving them through their statuses, stopping them.

`switch_run_status` is the only place a run's status changes; it checks the
transition and records an event. Stopping only marks the run: the supervision
reconciler signals the processes (outside any transaction) until they are gone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from flotilla.core.queue import QUEUED
from flotilla.core.status import RunStatus, TaskStatus, can_switch
from flotilla.errors import Conflict, NotFound
from flotilla.server.db.models import RecipeModel, RunModel, TaskModel
from flotilla.server.services.events import record_event

ACTIVE_STATUSES = [s.value for s in RunStatus if s.is_active()]


def task_name(job_name: str, number: int, rank: int, attempt: int) -> str:
    """Saturn-style pod name: `<job>-<run number>-<rank>`, attempts after the first
    suffixed, so that every attempt's logs stay addressable."""
    base = f"{job_name}-{number}-{rank}"
    return base if attempt == 0 else f"{base}-retry{attempt}"


def new_tasks(run: RunModel, job_name: str) -> list[TaskModel]:
    scale = int(run.spec.get("scale", 1))
    return [
        TaskModel(
            id=f"{run.id}-{run.attempt}-{rank}",
            run_id=run.id,
            attempt=run.attempt,
            rank=rank,
            name=task_name(job_name, run.number, rank, run.attempt),
            status=TaskStatus.PENDING.value,
            node=None,
            address=None,
            gpus=[],
            pid=None,
            exit_code=None,
            message="",
            started_at=None,
            finished_at=None,
        )
        for rank in range(scale)
    ]


def _priority(spec: dict[str, Any]) -> int:
    """The queue's order within an owner: the spec's priority (a job's; a
    deployment's replicas have none). An invalid one is the scheduler's to report."""
    value = spec.get("priority", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def next_run_number(session: AsyncSession, recipe: RecipeModel) -> int:
    """One past `recipe`'s last run number, counted in the database: concurrent
    starts of one job each get their own (read and written back, two starts on
    PostgreSQL read the same count and both got it plus one). The row stays
    locked until the transaction ends, so numbers follow commit order."""
    query = (
        update(RecipeModel)
        .where(RecipeModel.id == recipe.id)
        .values(run_counter=RecipeModel.run_counter + 1)
        .returning(RecipeModel.run_counter)
        .execution_options(synchronize_session=False)
    )
    number = int((await session.execute(query)).scalar_one())
    set_committed_value(recipe, "run_counter", number)
    return number


async def create_run(
    session: AsyncSession,
    recipe: RecipeModel,
    *,
    trigger: str,
    actor: str,
    now: datetime,
    spec: dict[str, Any] | None = None,
) -> RunModel:
    """A pending run of `recipe` with its spec as it is now (or `spec`: what a
    deployment replica runs)."""
    if recipe.deleted_at is not None:
        raise Conflict(f"{recipe.type} {recipe.name} is deleted")
    number = await next_run_number(session, recipe)
    spec = dict(spec if spec is not None else recipe.spec)
    run = RunModel(
        id=uuid.uuid4().hex,
        recipe_id=recipe.id,
        owner=recipe.owner,
        priority=_priority(spec),
        number=number,
        attempt=0,
        status=RunStatus.PENDING.value,
        reason=QUEUED,
        trigger=trigger,
        created_by=actor,
        spec=spec,
        exit_code=None,
        leader_port=None,
        queued_at=now,
        started_at=None,
        finished_at=None,
        stop_requested_at=None,
        stop_reason=None,
        requeue_reason=None,
        retries_used=0,
    )
    session.add(run)
    session.add_all(new_tasks(run, recipe.name))
    record_event(
        session,
        kind="created",
        message=f"run {run.number} created by {trigger} trigger",
        actor=actor,
        now=now,
        recipe_id=recipe.id,
        run_id=run.id,
    )
    return run


def switch_run_status(
    session: AsyncSession,
    run: RunModel,
    new: RunStatus,
    *,
    reason: str,
    actor: str,
    now: datetime,
) -> None:
    current = RunStatus(run.status)
    if current == new:
        run.reason = reason
        return
    if not can_switch(current, new):
        raise Conflict(f"run {run.id} cannot go from {current} to {new}")
    run.status = new.value
    run.reason = reason
    if new == RunStatus.RUNNING and run.started_at is None:
        run.started_at = now
    if new.is_finished():
        run.finished_at = now
    if new == RunStatus.PENDING:  # requeued: a fresh attempt
        run.finished_at = None
        run.started_at = None
        run.exit_code = None
        run.stop_requested_at = None
        run.stop_reason = None
        run.requeue_reason = None
    message = f"{current} -> {new}" + (f": {reason}" if reason else "")
    record_event(
        session,
        kind="status",
        message=message,
        actor=actor,
        now=now,
        recipe_id=run.recipe_id,
        run_id=run.id,
    )


def request_stop(
    session: AsyncSession, run: RunModel, *, reason: str, actor: str, now: datetime
) -> bool:
    """Ask a run to stop. A pending run stops at once; a placed one is marked and
    its processes are signalled by the supervision reconciler. True if it changed."""
    status = RunStatus(run.status)
    if status.is_finished() or run.stop_requested_at is not None:
        return False
    # Kept even when the run stops at once: if the scheduler placed it meanwhile
    # (its transaction read it pending and commits after this one, writing only
    # the columns it changed), supervision still sees the request and stops it.
    run.stop_requested_at = now
    run.stop_reason = reason
    if status == RunStatus.PENDING:
        switch_run_status(session, run, RunStatus.STOPPED, reason=reason, actor=actor, now=now)
        return True
    record_event(
        session,
        kind="stop",
        message=f"stop requested: {reason}",
        actor=actor,
        now=now,
        recipe_id=run.recipe_id,
        run_id=run.id,
    )
    return True


async def active_runs(session: AsyncSession, recipe_id: str) -> Sequence[RunModel]:
    query = select(RunModel).where(
        RunModel.recipe_id == recipe_id, RunModel.status.in_(ACTIVE_STATUSES)
    )
    return (await session.execute(query)).scalars().all()


async def stop_active_runs(
    session: AsyncSession, recipe_id: str, *, reason: str, actor: str, now: datetime
) -> int:
    runs = await active_runs(session, recipe_id)
    return sum(request_stop(session, r, reason=reason, actor=actor, now=now) for r in runs)


async def run_named(session: AsyncSession, recipe_id: str, name: str) -> RunModel | None:
    """The recipe's run named by its id, its number or one of its pods (the
    newest, if several): found by query, however many runs the recipe has had."""
    pods = (
        select(TaskModel.run_id)
        .join(RunModel, RunModel.id == TaskModel.run_id)
        .where(RunModel.recipe_id == recipe_id, TaskModel.name == name)
    )
    named = [RunModel.id == name, RunModel.id.in_(pods)]
    if name.isdigit():
        named.append(RunModel.number == int(name))
    query = (
        select(RunModel)
        .where(RunModel.recipe_id == recipe_id, or_(*named))
        .order_by(RunModel.number.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def recipe_runs(
    session: AsyncSession, recipe_id: str, limit: int = 100
) -> Sequence[RunModel]:
    query = (
        select(RunModel)
        .where(RunModel.recipe_id == recipe_id)
        .order_by(RunModel.number.desc())
        .limit(limit)
    )
    return (await session.execute(query)).scalars().all()


async def run_tasks(session: AsyncSession, run_ids: Sequence[str]) -> dict[str, list[TaskModel]]:
    if not run_ids:
        return {}
    query = (
        select(TaskModel)
        .where(TaskModel.run_id.in_(run_ids))
        .order_by(TaskModel.attempt, TaskModel.rank)
    )
    out: dict[str, list[TaskModel]] = {rid: [] for rid in run_ids}
    for task in (await session.execute(query)).scalars():
        out[task.run_id].append(task)
    return out


async def with_recipes(
    session: AsyncSession, runs_query: Select[RunModel]
) -> list[tuple[RunModel, RecipeModel]]:
    """The runs `runs_query` selects, in its order, each with its recipe. The
    recipes are read apart, once each: joined, every run's row would bring its
    recipe's spec again (many runs share one recipe)."""
    runs = list((await session.execute(runs_query)).scalars())
    recipes = await recipes_by_id(session, {run.recipe_id for run in runs})
    return [(run, recipes[run.recipe_id]) for run in runs if run.recipe_id in recipes]


async def recipes_by_id(session: AsyncSession, ids: Iterable[str]) -> dict[str, RecipeModel]:
    query = select(RecipeModel).where(RecipeModel.id.in_(set(ids)))
    return {r.id: r for r in (await session.execute(query)).scalars()}


def current_tasks(run: RunModel, tasks: list[TaskModel]) -> list[TaskModel]:
    return [t for t in tasks if t.attempt == run.attempt]


async def get_run(session: AsyncSession, run_id: str) -> RunModel:
    run = await session.get(RunModel, run_id)
    if run is None:
        raise NotFound(f"run {run_id}")
    return run


async def find_task_by_name(session: AsyncSession, name: str) -> TaskModel:
    task = (
        (await session.execute(select(TaskModel).where(TaskModel.name == name))).scalars().first()
    )
    if task is None:
        raise NotFound(f"pod {name!r}")
    return task
