"""The scheduler reconciler: places pending runs on nodes and launches them.

load (`services.scheduling.load_snapshot`: nodes and the runs holding them, kept
between steps and refreshed from what changed, and the head of the queue) ->
recover (evict work from draining, failed and terminated nodes) -> decide
(`services.placement.plan`, pure: gang placement in the topology, queue policy,
preemption, a reason for every waiting run) -> apply (assign tasks, mark runs
starting, build launch requests, all in one transaction) -> launch through the
backend after the commit. A launch lost to a crash in between is redone by the
supervision reconciler, because launching is idempotent.

One run whose start fails unexpectedly fails only itself: the cycle is redone
without it, and it gets an error event and backs off (`isolation.py`). A pending
run whose stored spec no longer validates ends in error, saying why.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.base import LaunchRequest
from flotilla.core.status import RunStatus, TaskStatus
from flotilla.errors import ClientError, FlotillaError
from flotilla.recipes.job import JobSpec
from flotilla.runtime.taskspec import RunAs
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import NodeModel, RecipeModel, RunModel, TaskModel
from flotilla.server.reconcilers import recovery
from flotilla.server.reconcilers.isolation import Quarantine, report_failures
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.node_isolation import confined_nodes
from flotilla.server.services.fleets.node_trust import bar_untrusted
from flotilla.server.services.fleets.nodes import is_virtual, nodes_named
from flotilla.server.services.runs.capacity import Capacity
from flotilla.server.services.runs.launch import (
    free_port,
    launch_requests,
    protected_paths,
    resolve_run_as,
    resolve_secrets,
    workload_of,
)
from flotilla.server.services.runs.placement import Plan, TaskPlacement, plan
from flotilla.server.services.runs.queue_head import QueueHead, Waiting, attach
from flotilla.server.services.runs.runs import current_tasks, run_tasks, switch_run_status
from flotilla.server.services.runs.scheduling import (
    PENDING_WINDOW,
    Snapshot,
    load_policy,
    load_snapshot,
    recent_usage,
)

log = logging.getLogger("flotilla.scheduler")
ACTOR = "scheduler"
# Like Slurm's queue depth: a cycle ends after this many runs in a row could not
# start; the rest keep their previous reason until capacity changes. The window
# each step reads per owner and tier (`load_snapshot`) is as deep.
QUEUE_DEPTH = PENDING_WINDOW
USAGE_TTL = 15.0  # seconds a fair-share usage figure is reused
VIRTUAL = (
    "the command is not run; each task takes the time its recipe gives "
    "(FLOTILLA_VIRTUAL_SECONDS, or a leading `sleep N`) and exits with "
    "FLOTILLA_VIRTUAL_EXIT_CODE (0)"
)


class Scheduler(ReconcileLoop):
    name = "scheduler"
    watches = (Change.RUNS_QUEUED, Change.CAPACITY_FREED, Change.NODES_CHANGED, Change.QUEUE_POLICY)
    paced = True  # its step reloads nodes and holders: see `ReconcileLoop.paced`

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.changes, ctx.settings.resync_seconds, min_gap=0.01)
        self.ctx = ctx
        # What the last decision saw. While nodes, holders and the queue are the
        # same, deciding again would give the same answer: skip it.
        self._last_seen: tuple[object, ...] | None = None
        self._deciding: tuple[object, ...] | None = None
        self._usage: tuple[float, dict[str, float]] = (-1e9, {})
        self.quarantine = Quarantine(self.name)
        self.capacity = Capacity(ctx.writes.reader())
        self.queue = QueueHead(ctx.writes.reader())

    async def step(self) -> None:
        async def cycle() -> list[LaunchRequest]:
            self._deciding = None
            try:
                async with self.ctx.sessions() as session, session.begin():
                    return await self._cycle(session)
            except BaseException:
                self.capacity.reload()  # the rollback expired what this cycle read
                self.queue.reload()
                raise

        requests, failures = await self.quarantine.rerun(cycle)
        await report_failures(self.ctx, failures, ACTOR, keyed_by_run=True)
        # Only a committed decision may be skipped next time: after a failed cycle
        # the same inputs must be decided again.
        if self._deciding is not None:
            self._last_seen = self._deciding
        if requests:
            await self.launch(requests)

    async def launch(self, requests: list[LaunchRequest]) -> None:
        # Each run's checkpoint directory must exist before any rank starts; tasks
        # on virtual nodes run nothing, so they need none.
        checkpointed = {r.task.run_id for r in requests if r.checkpoint_dir and not r.virtual}
        if checkpointed:
            self.ctx.settings.checkpoints.mkdir(parents=True, exist_ok=True, mode=0o700)
        for run_id in checkpointed:
            (self.ctx.settings.checkpoints / run_id).mkdir(exist_ok=True)
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

    async def _cycle(self, session: AsyncSession) -> list[LaunchRequest]:
        now = self.ctx.clock.now()
        snapshot = await load_snapshot(session, now, self.capacity, queue=self.queue)
        for run, why in snapshot.broken:
            switch_run_status(
                session,
                run,
                RunStatus.ERROR,
                reason=f"cannot be scheduled: its stored spec is invalid: {why}",
                actor=ACTOR,
                now=now,
            )
        snapshot.pending = [
            w for w in snapshot.pending if not self.quarantine.holds(w.run.id, w.run.attempt)
        ]
        if await recovery.evict_from_lost_nodes(session, snapshot, now):
            self.ctx.changes.announce(Change.STOPS_REQUESTED)
        await recovery.finish_drains(session, snapshot, now)
        snapshot.barred = await bar_untrusted(
            session, snapshot, self.ctx.local_isolation, self.ctx.settings.run_as_user
        )
        policy = await load_policy(session)
        seen = (_fingerprint(snapshot), repr(policy))
        if not snapshot.pending or seen == self._last_seen:
            return []
        self._deciding = seen
        decided = plan(snapshot, policy, await self._usage_now(session), QUEUE_DEPTH)
        if decided.preempt:
            await recovery.evict_runs(session, decided.preempt, now)
            self.ctx.changes.announce(Change.STOPS_REQUESTED)
        if decided.waiting_for_capacity:
            self.ctx.changes.announce(Change.CAPACITY_WANTED)  # an elastic fleet may grow for them
        for waiting in snapshot.pending:
            reason = decided.reasons.get(waiting.run.id)
            if reason and waiting.run.reason != reason:
                await attach(session, waiting)
                waiting.run.reason = reason
        if decided.placements and snapshot.more_waiting:
            self.ctx.changes.announce(Change.RUNS_QUEUED)  # the next window may start too
        return await self._apply(session, snapshot, decided)

    async def _usage_now(self, session: AsyncSession) -> dict[str, float]:
        at, usage = self._usage
        if time.monotonic() - at > USAGE_TTL:
            usage = await recent_usage(session, self.ctx.clock.now())
            self._usage = (time.monotonic(), usage)
        return usage

    async def _apply(
        self, session: AsyncSession, snapshot: Snapshot, decided: Plan
    ) -> list[LaunchRequest]:
        requests: list[LaunchRequest] = []
        for waiting in snapshot.pending:
            placements = decided.placements.get(waiting.run.id)
            if placements is not None:
                with self.quarantine.blame(waiting.run.id, waiting.run.attempt):
                    requests += await self._start(session, waiting, placements, snapshot.nodes)
        return requests

    async def _start(
        self,
        session: AsyncSession,
        waiting: Waiting,
        placements: list[TaskPlacement],
        nodes_by_name: Mapping[str, NodeModel],
    ) -> list[LaunchRequest]:
        await attach(session, waiting)
        run, recipe, spec = waiting.run, waiting.recipe, waiting.spec
        now = self.ctx.clock.now()
        try:
            secret_env, secret_files = await resolve_secrets(
                session, self.ctx.secret_box, spec, recipe, run
            )
        except ClientError as e:
            reason = f"cannot launch: {e.message}"
            switch_run_status(session, run, RunStatus.ERROR, reason=reason, actor=ACTOR, now=now)
            return []
        for task, where in zip(waiting.tasks, placements, strict=True):
            task.node, task.address, task.gpus = where.node, where.address, list(where.gpus)
            task.status = TaskStatus.STARTING.value
        run.leader_port = free_port()
        nodes = sorted({p.node for p in placements})
        switch_run_status(
            session,
            run,
            RunStatus.STARTING,
            reason=f"launching on {', '.join(nodes)}",
            actor=ACTOR,
            now=now,
        )
        run_as = await self._run_as(session, run, recipe, waiting.tasks, nodes_by_name)
        notes = []
        # How the workload runs is said of the machines that run it: none does
        # on virtual nodes, which only time it.
        if run_as.virtual_on != set(nodes):
            notes.append(self.ctx.backend.host_note(workload_of(spec)))
        if run_as.virtual_on:
            notes.append(f"on virtual nodes ({', '.join(sorted(run_as.virtual_on))}): {VIRTUAL}")
        for note in notes:
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
        return self._requests(
            run, spec, waiting.tasks, recipe.name, secret_env, secret_files, run_as
        )

    async def _run_as(
        self,
        session: AsyncSession,
        run: RunModel,
        recipe: RecipeModel,
        tasks: list[TaskModel],
        known: Mapping[str, NodeModel] | None = None,
    ) -> LaunchPlan:
        """The account the run's tasks run as, the nodes of `tasks` where they do
        (FLOTILLA_RUN_AS_USER, and what each node can do: `node_isolation`), and
        those that only time them (virtual nodes run nothing, so confine nothing).
        Nodes are taken from `known` (the step's snapshot) when it has them all."""
        names = {t.node for t in tasks if t.node}
        nodes = [known[n] for n in names if n in known] if known else []
        if len(nodes) < len(names):
            nodes = await nodes_named(session, names)
        virtual = frozenset(n.name for n in nodes if is_virtual(n))
        confined = confined_nodes(
            [n for n in nodes if n.name not in virtual],
            self.ctx.local_isolation,
            self.ctx.settings.run_as_user,
        )
        if not confined:
            return LaunchPlan(None, confined, virtual)
        return LaunchPlan(await resolve_run_as(session, run, recipe), confined, virtual)

    def _requests(
        self,
        run: RunModel,
        spec: JobSpec,
        tasks: list[TaskModel],
        job_name: str,
        secret_env: dict[str, str],
        secret_files: list[tuple[str, str]],
        run_as: LaunchPlan,
    ) -> list[LaunchRequest]:
        return launch_requests(
            run,
            tasks,
            job_name,
            secret_env,
            secret_files,
            run.leader_port or 29500,
            self.ctx.settings.stop_grace_seconds,
            str(self.ctx.settings.checkpoints / run.id),
            run_as.account,
            protected_paths(self.ctx.settings),
            run_as.confined_on,
            run_as.virtual_on,
            spec,
        )

    async def relaunch(
        self, session: AsyncSession, run: RunModel, tasks: list[TaskModel]
    ) -> list[LaunchRequest]:
        """Launch requests for tasks of a placed run that the backend does not know."""
        recipe = await session.get(RecipeModel, run.recipe_id)
        assert recipe is not None
        spec = JobSpec.model_validate(run.spec)
        secret_env, secret_files = await resolve_secrets(
            session, self.ctx.secret_box, spec, recipe, run
        )
        all_tasks = current_tasks(run, (await run_tasks(session, [run.id]))[run.id])
        wanted = {t.id for t in tasks}
        run_as = await self._run_as(session, run, recipe, all_tasks)
        requests = self._requests(
            run, spec, all_tasks, recipe.name, secret_env, secret_files, run_as
        )
        return [r for r in requests if r.task.task_id in wanted]


@dataclass(frozen=True)
class LaunchPlan:
    """How a run's tasks launch on their nodes: as which account, and where."""

    account: RunAs | None
    confined_on: frozenset[str]  # nodes whose tasks run as `account`
    virtual_on: frozenset[str]  # nodes that time tasks instead of running them


def _fingerprint(snapshot: Snapshot) -> tuple[object, ...]:
    return (
        snapshot.capacity_version,  # nodes and the runs holding them
        # Trust changes (a trusted user, a new group member) alter no node's state.
        tuple(sorted((run, tuple(sorted(b.nodes))) for run, b in snapshot.barred.items())),
        tuple((w.run.id, w.run.attempt) for w in snapshot.pending),
    )
