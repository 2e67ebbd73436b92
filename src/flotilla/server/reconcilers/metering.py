"""The metering reconciler: keeps the `usage` table in step with tasks.

Every task that has started on a node gets one usage row (unique per task), opened
with who it is billed to (the run's user, the recipe's owner and project), what
it holds (node, instance type, GPUs, spot, its share of the node) and the price in
force at that moment (the node's price times the share). The row closes when the
task finishes, at the task's own `finished_at` (now if the task row is gone).

Level-triggered, so crash-safe: each step compares tasks with rows rather than
acting on events. Woken by the supervision reconciler when tasks change, a step
looks only at the runs and nodes that committed transactions changed since the
last one (`db/writes.py`), so its cost is the work that changed, not the work in
flight; every `FULL_EVERY` seconds, on the first step and after a failed one, it
looks at every task and node, which catches what another server wrote, or a crash
slipped past. Several servers may meter at once: opening inserts with ON CONFLICT
DO NOTHING on the task id, and closing writes the same end whoever does it.

Fleet nodes that no task holds are metered too, as idle time billed to their fleet
(`services/metering/usage_rows.py`). Share and billing rules: `core.metering`.

One task whose row cannot be computed (a stored run spec with a value the code did
not expect) fails only itself: it gets an error event on its run and backs off
(`isolation.py`), and every other task is metered.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.metering import node_share
from flotilla.core.status import RunStatus, TaskStatus
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.batches import chunks, rows_where_in
from flotilla.server.db.models import (
    GroupModel,
    NodeModel,
    RecipeModel,
    RunModel,
    TaskModel,
    UsageModel,
)
from flotilla.server.reconcilers.isolation import Quarantine
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services.events import record_event
from flotilla.server.services.metering.usage_rows import (
    insert_usage_rows,
    is_task_row,
    meter_idle_nodes,
)

log = logging.getLogger("flotilla.metering")
FULL_EVERY = 60.0


class Metering(ReconcileLoop):
    name = "metering"
    watches = (Change.TASKS_CHANGED,)

    def __init__(self, ctx: ServerContext, full_every: float = FULL_EVERY) -> None:
        super().__init__(ctx.changes, ctx.settings.resync_seconds, min_gap=0.05)
        self.ctx = ctx
        self.full_every = full_every
        self._last_full = -1e9
        self.writes = ctx.writes.reader()
        self.quarantine = Quarantine(self.name)

    async def step(self) -> None:
        full = time.monotonic() - self._last_full >= self.full_every
        runs, nodes = self.writes.take()  # before reading: later commits wait for next time
        if not (full or runs or nodes):
            return
        began = self.ctx.clock.now()
        only = None if full else runs
        try:
            async with self.ctx.transaction() as session:
                opened = await open_rows(session, only, self.quarantine, began)
                closed = await close_rows(session, began, only)
                names = None if full else await touched_nodes(session, runs, nodes)
                opened += await meter_idle_nodes(session, began, names)
        except BaseException:
            self._last_full = -1e9  # what was taken is read again with everything else
            raise
        if opened or closed:
            log.debug("metering: %d rows opened, %d closed", opened, closed)
        if full:
            self._last_full = time.monotonic()

    async def drain(self) -> None:
        """A full step now (tests, shutdown)."""
        self._last_full = -1e9
        await self.step()


async def open_rows(
    session: AsyncSession,
    runs: set[str] | None,
    quarantine: Quarantine,
    now: datetime,
) -> int:
    """A usage row for every started, placed task that has none; with `runs`, only
    those runs' tasks. A task whose row fails is set aside in `quarantine` (an
    event at `now`)."""
    query = (
        select(TaskModel, RunModel, RecipeModel)
        .join(RunModel, RunModel.id == TaskModel.run_id)
        .join(RecipeModel, RecipeModel.id == RunModel.recipe_id)
        .outerjoin(UsageModel, UsageModel.task_id == TaskModel.id)
        .where(
            TaskModel.started_at.is_not(None),
            TaskModel.node.is_not(None),
            UsageModel.id.is_(None),
        )
    )
    found = await rows_where_in(session, query, TaskModel.run_id, runs)
    if not found:
        return 0
    node_names = {task.node for task, _, _ in found if task.node}
    nodes = {
        n.name: n
        for n in (
            await session.execute(select(NodeModel).where(NodeModel.name.in_(node_names)))
        ).scalars()
    }
    owners = {recipe.owner for _, _, recipe in found}
    groups = set(
        (await session.execute(select(GroupModel.name).where(GroupModel.name.in_(owners))))
        .scalars()
        .all()
    )
    values = []
    for task, run, recipe in found:
        if quarantine.holds(task.id):
            continue
        try:
            node = nodes.get(task.node or "")
            values.append(usage_values(task, run, recipe, node, recipe.owner in groups))
        except Exception as e:
            failure = quarantine.failed(task.id, e)
            if failure.new:
                record_event(
                    session,
                    kind="error",
                    message=f"metering task {task.id}: {failure.event_message}",
                    actor="metering",
                    now=now,
                    recipe_id=recipe.id,
                    run_id=run.id,
                )
    if values:
        await insert_usage_rows(session, values)
    return len(values)


def usage_values(
    task: TaskModel,
    run: RunModel,
    recipe: RecipeModel,
    node: NodeModel | None,
    owner_is_group: bool,
) -> dict[str, Any]:
    """The row that meters `task`. A node row that is gone (it should not be: nodes
    are kept after termination) leaves the share unpriced."""
    assert task.started_at is not None
    task_gpus = len(task.gpus or [])
    resources = run.spec.get("resources") or {}
    cpus = resources.get("cpu") if isinstance(resources, dict) else None
    if node is not None:
        share = node_share(task_gpus, len(node.gpus or []), cpus, node.cpus)
        price = node.price_per_hour * share
    else:
        share, price = 0.0, 0.0
    return {
        "task_id": task.id,
        "run_id": run.id,
        "recipe_type": recipe.type,
        "recipe_name": recipe.name,
        "user": run.created_by,
        "owner": recipe.owner,
        "owner_kind": "group" if owner_is_group else "user",
        "project": recipe.project,
        "node": task.node or "",
        "instance_type": node.instance_type if node else "unknown",
        "gpu_type": node.gpu_type if node else None,
        "gpus": task_gpus,
        "spot": bool(node.spot) if node else False,
        "share": share,
        "price_per_hour": price,
        "started_at": task.started_at,
        "ended_at": task.finished_at if _task_done(task) else None,
    }


def _task_done(task: TaskModel) -> bool:
    return task.finished_at is not None and TaskStatus(task.status).is_finished()


async def close_rows(session: AsyncSession, now: datetime, runs: set[str] | None = None) -> int:
    """End the open rows whose task finished (or vanished); with `runs`, only
    those runs' rows. Reads only the columns that say when a task ended: the open
    rows are as many as the tasks running."""
    query = (
        select(
            UsageModel,
            TaskModel.finished_at,
            TaskModel.status,
            TaskModel.attempt,
            RunModel.status,
            RunModel.finished_at,
            RunModel.attempt,
        )
        .outerjoin(TaskModel, TaskModel.id == UsageModel.task_id)
        .outerjoin(RunModel, RunModel.id == TaskModel.run_id)
        .where(UsageModel.ended_at.is_(None), is_task_row())
    )
    rows = await rows_where_in(session, query, UsageModel.run_id, runs)
    closed = 0
    for (
        row,
        task_finished,
        task_status,
        task_attempt,
        run_status,
        run_finished,
        run_attempt,
    ) in rows:
        ended = Ended(
            task_finished, task_status, task_attempt, run_status, run_finished, run_attempt
        )
        end = end_of(ended, now)
        if end is not None:
            row.ended_at = max(end, row.started_at)
            closed += 1
    return closed


async def touched_nodes(session: AsyncSession, runs: set[str], node_ids: set[str]) -> set[str]:
    """The names of the nodes `node_ids`, and of those the tasks of `runs` were
    placed on (from the tasks, and from the usage rows of runs since deleted)."""
    names: set[str] = set()
    for chunk in chunks(node_ids):
        names.update(
            (await session.execute(select(NodeModel.name).where(NodeModel.id.in_(chunk)))).scalars()
        )
    for chunk in chunks(runs):
        tasks = select(TaskModel.node).where(
            TaskModel.run_id.in_(chunk), TaskModel.node.is_not(None)
        )
        rows = select(UsageModel.node).where(UsageModel.run_id.in_(chunk))
        names.update(n for n in (await session.execute(tasks.union(rows))).scalars() if n)
    return names


@dataclass
class Ended:
    """What says whether a metered task ended: its task's and its run's state
    (all None when the task row is gone)."""

    task_finished_at: datetime | None
    task_status: str | None
    task_attempt: int | None
    run_status: str | None
    run_finished_at: datetime | None
    run_attempt: int | None


def end_of(ended: Ended, now: datetime) -> datetime | None:
    """When a metered task ended, or None while it runs."""
    if ended.task_status is None or ended.run_status is None:
        return now  # deleted with its run: it ran until we noticed
    if ended.task_finished_at is not None:
        return ended.task_finished_at
    if TaskStatus(ended.task_status).is_finished():
        return now
    # Safety nets: supervision finishes tasks before their run, and a requeue
    # starts a new attempt only after the old one's tasks ended.
    if RunStatus(ended.run_status).is_finished():
        return ended.run_finished_at or now
    if ended.task_attempt != ended.run_attempt:
        return now
    return None
