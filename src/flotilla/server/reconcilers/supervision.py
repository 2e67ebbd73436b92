"""The supervision reconciler: keeps runs' statuses in step with their processes.

Inputs: task events pushed by the backend (fast path) and, every resync interval,
a full `observe` of every placed task (the level-triggered truth after restarts
and lost events). It also delivers stop requests, enforces `max_duration`, relaunches
tasks the backend never got, and requeues failed runs within their `retries`.

A full resync looks at every placed run, so it reads them without their stored
spec (decoding thousands of specs every resync cost more than the rest of the
step): what it needs of a spec, `max_duration`, is kept per run (a run's spec
never changes), and the spec itself is read only for the run that needs it (to
retry, requeue or relaunch it).

One run whose update fails (a stored spec that no longer parses) fails only itself:
the transaction is redone without it, and it gets an error event and backs off
(`isolation.py`) while every other run is supervised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import inspect, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer
from sqlalchemy.orm.attributes import set_committed_value

from flotilla.compute.base import LaunchRequest, TaskRef
from flotilla.core.backoff import doubling
from flotilla.core.status import RunStatus, TaskStatus
from flotilla.core.verdict import RunVerdict, TaskView, judge_run
from flotilla.errors import FlotillaError
from flotilla.recipes.job import JobSpec
from flotilla.runtime.taskspec import EXITED, LOST, RUNNING, UNKNOWN, TaskState
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.batches import chunks
from flotilla.server.db.models import RecipeModel, RunModel, TaskModel
from flotilla.server.reconcilers.isolation import Quarantine, report_failures
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.reconcilers.scheduler import Scheduler
from flotilla.server.services.runs.launch import task_ref
from flotilla.server.services.runs.runs import (
    current_tasks,
    new_tasks,
    recipes_by_id,
    request_stop,
    run_tasks,
    switch_run_status,
)

log = logging.getLogger("flotilla.supervision")
ACTOR = "supervisor"
PLACED = [RunStatus.PROVISIONING.value, RunStatus.STARTING.value, RunStatus.RUNNING.value]


class Supervision(ReconcileLoop):
    name = "supervision"
    watches = (Change.STOPS_REQUESTED, Change.NODES_CHANGED)

    def __init__(self, ctx: ServerContext, scheduler: Scheduler) -> None:
        super().__init__(ctx.changes, ctx.settings.resync_seconds, min_gap=0.01)
        self.ctx = ctx
        self.scheduler = scheduler
        self.events: dict[str, TaskState] = {}
        self._last_full = 0.0
        self._signalled: dict[str, float] = {}  # task id -> when we last sent SIGTERM
        self._limits: dict[str, float | None] = {}  # run id -> its max_duration (seconds)
        self.quarantine = Quarantine(self.name)

    async def on_task_event(self, state: TaskState) -> None:
        """Backend callback: remember the newest state and wake the loop."""
        self.events[state.task_id] = state
        self.wake.set()

    async def step(self) -> None:
        full = time.monotonic() - self._last_full >= self.interval
        events, self.events = self.events, {}
        if full:
            async with self.ctx.sessions() as session:
                _, tasks = await self._load(session)
            observed = await self.ctx.backend.observe(
                [task_ref(t) for t in tasks if t.status != TaskStatus.PENDING.value]
            )
            events = {**{s.task_id: s for s in observed}, **events}
            self._last_full = time.monotonic()
        # Between full resyncs, only the runs that events (or stop requests) touch
        # are loaded: a step costs O(changes), not O(everything running).
        scope = None if full else {task_id.split("-", 1)[0] for task_id in events}

        async def supervise() -> tuple[list[TaskRef], list[LaunchRequest], bool, bool]:
            stops: list[TaskRef] = []
            relaunch: list[LaunchRequest] = []
            requeued = finished = False
            async with self.ctx.sessions() as session, session.begin():
                runs, tasks = await self._load(session, scope)
                by_run: dict[str, list[TaskModel]] = {}
                for task in tasks:
                    by_run.setdefault(task.run_id, []).append(task)
                runs = [r for r in runs if not self.quarantine.holds(r.id, r.attempt)]
                heard: dict[str, _Heard] = {}
                for run in runs:
                    with self.quarantine.blame(run.id, run.attempt):
                        heard[run.id] = self._hear(run, by_run.get(run.id, []), events)
                # What is read of specs, for all the step's runs at once, not one
                # query per run (a thousand runs stopped at once end here): those
                # that end and may retry or requeue, and the limits of those running.
                requeuing = [r for r in runs if _needs_spec(r, heard[r.id].verdict)]
                if requeuing:  # with their recipes: a new attempt's tasks are named by them
                    await with_specs(session, requeuing)
                    recipes = await recipes_by_id(session, (r.recipe_id for r in requeuing))
                    for run in requeuing:
                        heard[run.id].recipe = recipes.get(run.recipe_id)
                if full:
                    running = RunStatus.RUNNING
                    await self._learn_limits(
                        session,
                        [r for r in runs if running in (r.status, heard[r.id].verdict.status)],
                    )
                for run in runs:
                    with self.quarantine.blame(run.id, run.attempt):
                        found = await self._supervise(
                            session, run, by_run.get(run.id, []), heard[run.id], full
                        )
                    stops += found.stops
                    relaunch += found.relaunch
                    status = RunStatus(run.status)
                    requeued |= status == RunStatus.PENDING
                    finished |= status.is_finished()
                if full:
                    self.quarantine.keep_only(r.id for r in runs)
                    self._limits = {r.id: self._limits[r.id] for r in runs if r.id in self._limits}
            return stops, relaunch, requeued, finished

        (stops, relaunch, requeued, finished), failures = await self.quarantine.rerun(supervise)
        await report_failures(self.ctx, failures, ACTOR, keyed_by_run=True)
        await self._signal(self._due_for_signal(stops))
        if relaunch:
            log.warning("relaunching %d tasks the backend did not know", len(relaunch))
            await self.scheduler.launch(relaunch)
        if requeued:
            self.ctx.changes.announce(Change.RUNS_QUEUED)
        if finished:
            self.ctx.changes.announce(Change.CAPACITY_FREED)
        if events:
            self.ctx.changes.announce(Change.TASKS_CHANGED)

    def _hear(self, run: RunModel, tasks: list[TaskModel], events: dict[str, TaskState]) -> _Heard:
        """Record what `run`'s tasks' nodes said, and what that makes of the run."""
        unknown = [t for t in tasks if self._apply(t, events.get(t.id))]
        views = [TaskView(t.rank, TaskStatus(t.status), t.exit_code, t.message) for t in tasks]
        verdict = judge_run(RunStatus(run.status), views, run.stop_requested_at is not None)
        return _Heard(unknown, verdict)

    async def _supervise(
        self,
        session: AsyncSession,
        run: RunModel,
        tasks: list[TaskModel],
        heard: _Heard,
        full: bool,
    ) -> _Found:
        """One run: judge it from what its tasks' nodes said, and say which of its
        tasks to stop or launch again."""
        found = _Found()
        unknown = heard.unknown
        gang_stop = await self._judge(session, run, tasks, heard)
        if full:
            await self._enforce_max_duration(session, run)
        status = RunStatus(run.status)
        if (run.stop_requested_at is not None or gang_stop) and status.is_active():
            found.stops = [task_ref(t) for t in tasks if not TaskStatus(t.status).is_finished()]
        elif unknown and full:
            await with_spec(session, run)
            found.relaunch = await self.scheduler.relaunch(session, run, unknown)
        return found

    async def _load(
        self, session: AsyncSession, scope: set[str] | None = None
    ) -> tuple[Sequence[RunModel], list[TaskModel]]:
        """Placed runs (without their specs: `with_spec`) and their current tasks:
        all of them, or those in `scope` plus the ones with a stop request to deliver."""
        query = select(RunModel).options(defer(RunModel.spec)).where(RunModel.status.in_(PLACED))
        if scope is not None:
            query = query.where(RunModel.id.in_(scope) | RunModel.stop_requested_at.is_not(None))
        runs = (await session.execute(query)).scalars().all()
        by_run = await run_tasks(session, [r.id for r in runs])
        tasks = [t for r in runs for t in current_tasks(r, by_run[r.id])]
        return runs, tasks

    def _apply(self, task: TaskModel, state: TaskState | None) -> bool:
        """Record what the node says about `task`. True if the node never heard of it."""
        if state is None or TaskStatus(task.status).is_finished():
            return False
        if state.phase == RUNNING and task.status != TaskStatus.RUNNING.value:
            task.status = TaskStatus.RUNNING.value
            task.pid = state.pid
            task.started_at = _ts(state.started_at)
        elif state.phase == EXITED:
            task.pid = state.pid or task.pid
            task.started_at = task.started_at or _ts(state.started_at)
            task.finished_at = _ts(state.finished_at)
            task.exit_code = state.exit_code
            task.message = state.message
            task.status = _exited_status(state).value
        elif state.phase == LOST:
            task.status = TaskStatus.LOST.value
            task.message = state.message
            task.finished_at = self.ctx.clock.now()
        elif state.phase == UNKNOWN:
            return True
        return False

    async def _judge(
        self, session: AsyncSession, run: RunModel, tasks: list[TaskModel], heard: _Heard
    ) -> bool:
        """Update the run from its tasks' verdict. True if the rest of the gang
        must stop."""
        now = self.ctx.clock.now()
        verdict = heard.verdict
        if verdict.status is None:
            return verdict.stop_others is not None
        if verdict.status == RunStatus.RUNNING:
            switch_run_status(
                session, run, RunStatus.RUNNING, reason="running", actor=ACTOR, now=now
            )
            started = [t.started_at for t in tasks if t.started_at]
            run.started_at = min(started) if started else now
            return False
        run.exit_code = verdict.exit_code
        # A requeue or a retry reads the spec and the recipe: the step read both
        # for all its runs at once (`_needs_spec`). Nothing here may query: each
        # query would flush the run before it, one round trip per write.
        if run.requeue_reason is not None and verdict.status != RunStatus.SUCCEEDED:
            # Evicted by the platform (node lost, drain, spot notice, preemption):
            # the work goes back to the queue whatever the processes said.
            why = run.requeue_reason
            switch_run_status(session, run, RunStatus.PREEMPTED, reason=why, actor=ACTOR, now=now)
            await self._requeue(session, run, f"requeued after: {why}", heard.recipe)
            return False
        switch_run_status(session, run, verdict.status, reason=verdict.reason, actor=ACTOR, now=now)
        if not _may_retry(run, verdict):
            return False
        retries = int(run.spec.get("retries", 0))
        if run.retries_used < retries:
            run.retries_used += 1
            wait = retry_backoff(self.ctx.settings.retry_backoff_seconds, run.retries_used)
            why = f"retry {run.retries_used} of {retries} in {wait:g} s after: {verdict.reason}"
            await self._requeue(session, run, why, heard.recipe)
            run.not_before = now + timedelta(seconds=wait)
        return False

    async def _requeue(
        self, session: AsyncSession, run: RunModel, why: str, recipe: RecipeModel | None
    ) -> None:
        """A new attempt of the run, queued again (its checkpoint directory stays).
        `recipe`: the run's, read by the step (`_Heard.recipe`)."""
        assert recipe is not None
        attempt = run.attempt + 1
        switch_run_status(
            session, run, RunStatus.PENDING, reason=why, actor=ACTOR, now=self.ctx.clock.now()
        )
        run.attempt = attempt
        run.not_before = None  # a platform requeue goes at once; a retry sets its wait
        session.add_all(new_tasks(run, recipe.name))

    async def _learn_limits(self, session: AsyncSession, runs: Sequence[RunModel]) -> None:
        """The max_duration of those of the running `runs` not seen before, from
        their specs (one query per thousand). A spec that does not validate is left
        for `_enforce_max_duration` to fail on, under its run's blame."""
        new = [r.id for r in runs if r.id not in self._limits]
        for chunk in chunks(new):
            query = select(RunModel.id, RunModel.spec).where(RunModel.id.in_(chunk))
            for run_id, spec in await session.execute(query):
                with contextlib.suppress(ValidationError):
                    self._limits[run_id] = JobSpec.model_validate(spec).max_duration_seconds()

    async def _enforce_max_duration(self, session: AsyncSession, run: RunModel) -> None:
        if run.started_at is None or run.status != RunStatus.RUNNING.value:
            return
        if run.id not in self._limits:
            await with_spec(session, run)
            self._limits[run.id] = JobSpec.model_validate(run.spec).max_duration_seconds()
        limit = self._limits[run.id]
        now = self.ctx.clock.now()
        if limit is None:
            return
        if now - run.started_at > timedelta(seconds=limit):
            request_stop(
                session, run, reason=f"exceeded max_duration of {limit:g}s", actor=ACTOR, now=now
            )

    def _due_for_signal(self, tasks: list[TaskRef]) -> list[TaskRef]:
        """Stop requests are repeated (idempotently) only once per resync interval."""
        now = time.monotonic()
        due = [t for t in tasks if now - self._signalled.get(t.task_id, -1e9) >= self.interval]
        live = {t.task_id for t in tasks}
        self._signalled = {k: v for k, v in self._signalled.items() if k in live}
        self._signalled.update({t.task_id: now for t in due})
        return due

    async def _signal(self, tasks: list[TaskRef]) -> None:
        grace = self.ctx.settings.stop_grace_seconds
        results = await asyncio.gather(
            *(self.ctx.backend.stop(t, grace) for t in tasks), return_exceptions=True
        )
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, FlotillaError):
                log.warning("stopping task %s failed: %s", task.task_id, result)
            elif isinstance(result, BaseException):
                raise result


@dataclass
class _Heard:
    """What a run's tasks' nodes said: the tasks they never heard of, and the
    verdict on the run; and, for a run that may go back to the queue, its recipe."""

    unknown: list[TaskModel]
    verdict: RunVerdict
    recipe: RecipeModel | None = None


def _needs_spec(run: RunModel, verdict: RunVerdict) -> bool:
    """Whether judging `run` reads its spec: `verdict` ends it and it is requeued
    (the platform evicted it) or may be retried."""
    requeued = run.requeue_reason is not None and verdict.status not in (
        None,
        RunStatus.RUNNING,
        RunStatus.SUCCEEDED,
    )
    return requeued or _may_retry(run, verdict)


def _may_retry(run: RunModel, verdict: RunVerdict) -> bool:
    """A failed run is retried within its `retries`; one stopped on purpose (by
    a user, by max_duration) is not."""
    return verdict.status == RunStatus.FAILED and run.stop_reason is None


@dataclass
class _Found:
    stops: list[TaskRef] = field(default_factory=list)
    relaunch: list[LaunchRequest] = field(default_factory=list)


def _exited_status(state: TaskState) -> TaskStatus:
    if state.stopped:
        return TaskStatus.STOPPED
    if state.exit_code == 0:
        return TaskStatus.SUCCEEDED
    return TaskStatus.FAILED


async def with_spec(session: AsyncSession, run: RunModel) -> None:
    """Read `run`'s stored spec if it was left out (`Supervision._load`)."""
    await with_specs(session, [run])


async def with_specs(session: AsyncSession, runs: Sequence[RunModel]) -> None:
    """Read the stored specs of those of `runs` that were left out, a thousand
    runs a query. Set as loaded, not as changed: nothing is written back."""
    lacking = {r.id: r for r in runs if "spec" in inspect(r).unloaded}
    for chunk in chunks(list(lacking)):
        query = select(RunModel.id, RunModel.spec).where(RunModel.id.in_(chunk))
        for run_id, spec in await session.execute(query):
            set_committed_value(lacking[run_id], "spec", spec)


def _ts(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


RETRY_BACKOFF_MAX = 300.0


def retry_backoff(base: float, retry: int) -> float:
    """Seconds before retry number `retry` (1, 2, …): `base`, doubling, at most
    RETRY_BACKOFF_MAX."""
    return doubling(base, retry, RETRY_BACKOFF_MAX)
