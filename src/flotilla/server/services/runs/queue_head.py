"""The head of the pending queue, kept between scheduler steps.

Each step asks the database which runs head the queue (the first `window` of
each owner's priority tier, in arrival order: ids only, from the queue index),
but turns into objects, with their tasks and validated specs, only the runs it
did not hold already or that committed transactions changed since
(`db/writes.WriteReader`). Without it a step over a deep queue decoded and
validated the same 500 specs again at every wake-up, even to decide nothing.
Recipes are read at each step (few: one per job in the window), so a recipe's
new owner or project is seen at once.

A cached run is a detached object: before a step writes to one it is merged into
the step's session (`attach`), and the commit then reports it changed, so the
next step reads it again. What is written outside the server's sessions
(another process, raw SQL) is seen at the full reload every `FULL_RELOAD_SECONDS`,
or at once if it takes a run out of the queue head, which the id query sees.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import RunStatus
from flotilla.recipes.job import JobSpec
from flotilla.server.db.batches import chunks
from flotilla.server.db.models import RecipeModel, RunModel, TaskModel
from flotilla.server.db.writes import WriteReader
from flotilla.server.services.runs.capacity import FULL_RELOAD_SECONDS
from flotilla.server.services.runs.runs import current_tasks, recipes_by_id, run_tasks


@dataclass
class Waiting:
    run: RunModel
    recipe: RecipeModel
    spec: JobSpec
    tasks: list[TaskModel]


@dataclass
class Head:
    """One step's view of the queue head."""

    pending: list[Waiting]
    # Pending runs whose stored spec no longer validates, with why (attached to
    # the step's session: the scheduler ends them in error).
    broken: list[tuple[RunModel, str]]
    # Some owner has more pending runs in a tier than were read.
    more_waiting: bool


@dataclass
class _Cached:
    run: RunModel
    spec: JobSpec
    tasks: list[TaskModel]


@dataclass
class QueueHead:
    """`writes`: what committed transactions changed; None keeps nothing between
    calls (every call reads every run of the head)."""

    writes: WriteReader | None = None
    _cached: dict[str, _Cached] = field(default_factory=dict)
    _loaded_at: float = -1e9

    def reload(self) -> None:
        """Read every run again at the next `read` (after a step that rolled back)."""
        self._cached = {}

    async def read(self, session: AsyncSession, now: datetime, window: int) -> Head:
        changed, _ = self.writes.take() if self.writes is not None else (set(), set())
        if self.writes is None or time.monotonic() - self._loaded_at > FULL_RELOAD_SECONDS:
            self._cached, self._loaded_at = {}, time.monotonic()
        rows = await _head_rows(session, now, window)
        tiers = Counter((owner, priority) for _, owner, priority, _ in rows)
        wanted = [run_id for run_id, _, _, _ in rows]
        kept = {i: self._cached[i] for i in wanted if i in self._cached and i not in changed}
        fresh, broken = await _load(session, [i for i in wanted if i not in kept])
        loaded = {**kept, **fresh}
        self._cached = loaded if self.writes is not None else {}
        recipes = await recipes_by_id(session, (recipe_id for _, _, _, recipe_id in rows))
        pending = [
            Waiting(entry.run, recipes[entry.run.recipe_id], entry.spec, entry.tasks)
            for run_id in wanted
            if (entry := loaded.get(run_id)) is not None and entry.run.recipe_id in recipes
        ]
        return Head(pending, broken, any(count >= window for count in tiers.values()))


async def attach(session: AsyncSession, waiting: Waiting) -> None:
    """Make `waiting`'s run and tasks the objects of `session`, before writing them."""
    waiting.run = await session.merge(waiting.run, load=False)
    waiting.tasks = [await session.merge(t, load=False) for t in waiting.tasks]


async def _head_rows(
    session: AsyncSession, now: datetime, window: int
) -> list[tuple[str, str, int, str]]:
    """(id, owner, priority, recipe id) of the first `window` pending runs of each
    owner and priority tier, in arrival order (the queue index `ix_runs_queue`
    serves the ranking). A run still waiting out its retry back-off (`not_before`
    after `now`) is not in the queue yet."""
    place = (
        func.row_number()
        .over(
            partition_by=(RunModel.owner, RunModel.priority),
            order_by=(RunModel.queued_at, RunModel.id),
        )
        .label("place")
    )
    ranked = (
        select(
            RunModel.id,
            RunModel.owner,
            RunModel.priority,
            RunModel.recipe_id,
            RunModel.queued_at,
            place,
        )
        .where(
            RunModel.status == RunStatus.PENDING.value,
            or_(RunModel.not_before.is_(None), RunModel.not_before <= now),
        )
        .subquery()
    )
    query = (
        select(ranked.c.id, ranked.c.owner, ranked.c.priority, ranked.c.recipe_id)
        .where(ranked.c.place <= window)
        .order_by(ranked.c.queued_at, ranked.c.id)
    )
    return [(a, b, c, d) for a, b, c, d in await session.execute(query)]


async def _load(
    session: AsyncSession, ids: list[str]
) -> tuple[dict[str, _Cached], list[tuple[RunModel, str]]]:
    loaded: dict[str, _Cached] = {}
    broken: list[tuple[RunModel, str]] = []
    for chunk in chunks(ids):
        runs = (await session.execute(select(RunModel).where(RunModel.id.in_(chunk)))).scalars()
        found = list(runs)
        tasks = await run_tasks(session, [run.id for run in found])
        for run in found:
            try:
                spec = JobSpec.model_validate(run.spec)
            except ValidationError as e:
                broken.append((run, " ".join(str(e).split())[:500]))
                continue
            loaded[run.id] = _Cached(run, spec, current_tasks(run, tasks[run.id]))
    return loaded, broken
