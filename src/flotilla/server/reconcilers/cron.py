"""The cron reconciler: starts runs of scheduled jobs when their tick comes.

Each scheduled job stores its next tick. When it is due, one run starts (however
many ticks were missed while the server was down: no burst), subject to the job's
concurrency policy, and the next tick after now is stored in the same transaction,
so a crash never fires a tick twice.

One scheduled job whose tick fails (a stored schedule or spec that no longer
parses) fails only itself: the transaction is redone without it, and it gets an
error event and backs off (`isolation.py`) while every other job's ticks fire.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.cron import decide_tick
from flotilla.errors import ClientError
from flotilla.recipes.job import ConcurrencyPolicy
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import RecipeModel
from flotilla.server.reconcilers.isolation import Quarantine, report_failures
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services.events import record_event
from flotilla.server.services.runs.jobs import trigger_run
from flotilla.server.services.runs.runs import active_runs, request_stop

log = logging.getLogger("flotilla.cron")
ACTOR = "cron"


class Cron(ReconcileLoop):
    name = "cron"
    watches = (Change.SCHEDULES,)

    def __init__(self, ctx: ServerContext, interval: float = 1.0) -> None:
        super().__init__(ctx.changes, interval)
        self.ctx = ctx
        self.quarantine = Quarantine(self.name)

    async def step(self) -> None:
        now = self.ctx.clock.now()
        started, failures = await self.quarantine.rerun(lambda: self._ticks(now))
        await report_failures(self.ctx, failures, ACTOR)
        if started:
            self.ctx.changes.announce(Change.RUNS_QUEUED, Change.STOPS_REQUESTED)

    async def _ticks(self, now: datetime) -> bool:
        """Fire every due tick, in one transaction; True if a run started."""
        started = False
        async with self.ctx.sessions() as session, session.begin():
            due = (
                (
                    await session.execute(
                        select(RecipeModel)
                        .where(
                            RecipeModel.schedule_enabled.is_(True),
                            RecipeModel.deleted_at.is_(None),
                            RecipeModel.next_tick_at <= now,
                        )
                        # Another worker firing the same tick holds the row: skip it
                        # rather than fire twice (PostgreSQL; SQLite serialises anyway).
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            for recipe in due:
                if self.quarantine.holds(recipe.id, recipe.version):
                    continue
                with self.quarantine.blame(recipe.id, recipe.version):
                    started |= await self._tick(session, recipe, now)
        return started

    async def _tick(self, session: AsyncSession, recipe: RecipeModel, now: datetime) -> bool:
        schedule = recipe.spec.get("schedule")
        if not schedule or recipe.next_tick_at is None:
            recipe.schedule_enabled = False
            return False
        decision = decide_tick(schedule, recipe.next_tick_at, now)
        recipe.next_tick_at = decision.next_at
        if decision.missed:
            record_event(
                session,
                kind="cron",
                actor=ACTOR,
                now=now,
                recipe_id=recipe.id,
                message=f"{decision.missed} missed ticks skipped (not replayed)",
            )
        fired = await self._fire(session, recipe, now)
        self.quarantine.succeeded(recipe.id)
        return fired

    async def _fire(self, session: AsyncSession, recipe: RecipeModel, now: datetime) -> bool:
        policy = ConcurrencyPolicy(recipe.spec.get("concurrency_policy", "Allow"))
        running = await active_runs(session, recipe.id)
        if running and policy == ConcurrencyPolicy.FORBID:
            _skipped(
                session, recipe, now, f"{len(running)} run(s) active (concurrency_policy Forbid)"
            )
            return False
        if running and policy == ConcurrencyPolicy.REPLACE:
            for run in running:
                request_stop(
                    session, run, reason="replaced by a newer scheduled run", actor=ACTOR, now=now
                )
        try:
            # The owner's budgets apply to the runs their schedule starts.
            await trigger_run(session, recipe, recipe.owner, "cron", now, actor=ACTOR)
        except ClientError as refused:
            _skipped(session, recipe, now, refused.message)
            return False
        return True


def _skipped(session: AsyncSession, recipe: RecipeModel, now: datetime, why: str) -> None:
    record_event(
        session,
        kind="cron",
        actor=ACTOR,
        now=now,
        recipe_id=recipe.id,
        message=f"tick skipped: {why}",
    )
