"""The scheduler reconciler: places pending runs on free capacity and launches them.

load (pending runs, GPUs held by placed runs) -> decide (`core.placement.place_gang`,
pure) -> apply (assign, mark starting, build launch requests in one transaction) ->
launch through the backend after the commit. A launch lost to a crash in between is
redone by the supervision reconciler, because launching is idempotent.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.base import LaunchRequest
from flotilla.core.placement import NodeCapacity, Placement, TaskRequest, place_gang
from flotilla.core.status import RunStatus, TaskStatus
from flotilla.errors import ClientError, FlotillaError
from flotilla.recipes.job import JobSpec
from flotilla.server.context import ServerContext
from flotilla.server.db.models import RecipeModel, RunModel, TaskModel
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services.events import record_event
from flotilla.server.services.launch import free_port, launch_requests, resolve_secrets
from flotilla.server.services.runs import current_tasks, run_tasks, switch_run_status

log = logging.getLogger("flotilla.scheduler")
HOLDING = [s.value for s in RunStatus if s.holds_resources()]
ACTOR = "scheduler"


class Scheduler(ReconcileLoop):
    name = "scheduler"

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.wakers.scheduler, ctx.settings.resync_seconds, min_gap=0.01)
        self.ctx = ctx
        # Pending run id -> the free capacity it could not fit into. While capacity
        # stays the same the run is not looked at again, so a step costs O(new
        # runs), not O(queue), when thousands wait.
        self._unplaceable: dict[str, tuple[object, ...]] = {}

    async def step(self) -> None:
        async with self.ctx.sessions() as session, session.begin():
            requests = await self._place_pending(session)
        if requests:
            await self.launch(requests)

    async def launch(self, requests: list[LaunchRequest]) -> None:
        results = await asyncio.gather(
            *(self.ctx.backend.launch(r) for r in requests), return_exceptions=True
        )
        for request, result in zip(requests, results, strict=True):
            if isinstance(result, FlotillaError):
                # Not raised: the other runs must still launch, and the supervision
                # reconciler relaunches tasks the backend does not know.
                log.warning("launch of task %s failed: %s", request.task.task_id, result)
            elif isinstance(result, BaseException):
                raise result

    async def _place_pending(self, session: AsyncSession) -> list[LaunchRequest]:
        now = self.ctx.clock.now()
        pending_ids = (
            (
                await session.execute(
                    select(RunModel.id)
                    .where(RunModel.status == RunStatus.PENDING.value)
                    .order_by(RunModel.queued_at, RunModel.id)
                )
            )
            .scalars()
            .all()
        )
        still_pending = set(pending_ids)
        self._unplaceable = {k: v for k, v in self._unplaceable.items() if k in still_pending}
        if not pending_ids:
            return []
        capacity = await self._capacity(session)
        fingerprint = _fingerprint(capacity)
        wanted = [r for r in pending_ids if self._unplaceable.get(r) != fingerprint]
        if not wanted:
            return []
        rows = (
            await session.execute(
                select(RunModel, RecipeModel)
                .join(RecipeModel, RecipeModel.id == RunModel.recipe_id)
                .where(RunModel.id.in_(wanted))
            )
        ).all()
        order = {run_id: i for i, run_id in enumerate(wanted)}
        pending = sorted(rows, key=lambda row: order[row[0].id])
        tasks_by_run = await run_tasks(session, [run.id for run, _ in pending])
        requests: list[LaunchRequest] = []
        for run, recipe in pending:
            tasks = current_tasks(run, tasks_by_run[run.id])
            spec = JobSpec.model_validate(run.spec)
            decision = place_gang(TaskRequest(len(tasks), spec.resources.gpu_request()), capacity)
            if not isinstance(decision, Placement):
                run.reason = decision.reason
                self._unplaceable[run.id] = _fingerprint(capacity)
                continue
            try:
                secret_env, secret_files = await resolve_secrets(
                    session, self.ctx.secret_box, spec, recipe.owner
                )
            except ClientError as e:
                switch_run_status(
                    session,
                    run,
                    RunStatus.ERROR,
                    reason=f"cannot launch: {e.message}",
                    actor=ACTOR,
                    now=now,
                )
                continue
            for assignment in decision.assignments:
                task = tasks[assignment.rank]
                task.node, task.address = assignment.node, assignment.address
                task.gpus = list(assignment.gpus)
                task.status = TaskStatus.STARTING.value
                _take(capacity, assignment.node, assignment.gpus)
            run.leader_port = free_port()
            switch_run_status(
                session, run, RunStatus.STARTING, reason="launching", actor=ACTOR, now=now
            )
            note = self.ctx.backend.host_note(spec)
            if note:
                record_event(
                    session,
                    kind="backend",
                    message=note,
                    actor=ACTOR,
                    now=now,
                    recipe_id=run.recipe_id,
                    run_id=run.id,
                )
            requests += launch_requests(
                run,
                tasks,
                recipe.name,
                secret_env,
                secret_files,
                run.leader_port,
                self.ctx.settings.stop_grace_seconds,
            )
        return requests

    async def _capacity(self, session: AsyncSession) -> list[NodeCapacity]:
        held: dict[str, set[int]] = {}
        rows = await session.execute(
            select(TaskModel.node, TaskModel.gpus)
            .join(RunModel, RunModel.id == TaskModel.run_id)
            .where(RunModel.status.in_(HOLDING), TaskModel.attempt == RunModel.attempt)
        )
        for node, gpus in rows:
            if node:
                held.setdefault(node, set()).update(gpus or [])
        return [
            NodeCapacity(
                name=n.name,
                address=n.address,
                gpu_type=n.gpu_type,
                free_gpus=[g.index for g in n.gpus if g.index not in held.get(n.name, set())],
                total_gpus=len(n.gpus),
                labels=n.labels,
            )
            for n in self.ctx.backend.nodes()
        ]

    async def relaunch(
        self, session: AsyncSession, run: RunModel, tasks: list[TaskModel]
    ) -> list[LaunchRequest]:
        """Launch requests for tasks of a placed run that the backend does not know."""
        recipe = await session.get(RecipeModel, run.recipe_id)
        assert recipe is not None
        spec = JobSpec.model_validate(run.spec)
        secret_env, secret_files = await resolve_secrets(
            session, self.ctx.secret_box, spec, recipe.owner
        )
        all_tasks = current_tasks(run, (await run_tasks(session, [run.id]))[run.id])
        wanted = {t.id for t in tasks}
        return [
            r
            for r in launch_requests(
                run,
                all_tasks,
                recipe.name,
                secret_env,
                secret_files,
                run.leader_port or 29500,
                self.ctx.settings.stop_grace_seconds,
            )
            if r.task.task_id in wanted
        ]


def _fingerprint(capacity: list[NodeCapacity]) -> tuple[object, ...]:
    return tuple((n.name, n.schedulable, tuple(n.free_gpus)) for n in capacity)


def _take(capacity: list[NodeCapacity], node: str, gpus: tuple[int, ...]) -> None:
    for item in capacity:
        if item.name == node:
            item.free_gpus = [g for g in item.free_gpus if g not in gpus]
