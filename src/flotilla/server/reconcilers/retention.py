"""Retention: history that stops growing without bound.

Once an hour (and at start-up) this loop deletes the events older than
FLOTILLA_EVENT_RETENTION_DAYS (default 90) and removes the task logs of runs
that finished more than FLOTILLA_LOG_RETENTION_DAYS (default 30) ago, saying
so in the run's events and marking it (`runs.logs_removed_at`), so that reading
those logs answers 410 with when and why instead of an empty text. 0 keeps
either forever. Runs themselves, usage rows (what was spent) and the audit log
(who did what) are kept. Work is done in batches, each its own transaction, so
no lock is held long and a server with years of history catches up
step by step.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, select

from flotilla.server.context import ServerContext
from flotilla.server.db.models import EventModel, RunModel
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services.events import record_event
from flotilla.server.services.runs.launch import task_ref
from flotilla.server.services.runs.runs import run_tasks

log = logging.getLogger("flotilla.retention")
ACTOR = "retention"
INTERVAL_SECONDS = 3600.0
EVENT_BATCH = 5000
RUN_BATCH = 200


class Retention(ReconcileLoop):
    name = "retention"

    def __init__(self, ctx: ServerContext, interval: float = INTERVAL_SECONDS) -> None:
        super().__init__(ctx.changes, interval)
        self.ctx = ctx
        self._first = True

    def _delay(self) -> float:
        if self._first:  # catch up at start-up, then hourly
            self._first = False
            return 0.0
        return super()._delay()

    async def step(self) -> None:
        now = self.ctx.clock.now()
        settings = self.ctx.settings
        if settings.event_retention_days > 0:
            deleted = await self.delete_events(now - timedelta(days=settings.event_retention_days))
            if deleted:
                log.info("retention: deleted %d events", deleted)
        if settings.log_retention_days > 0:
            removed = await self.remove_logs(now - timedelta(days=settings.log_retention_days), now)
            if removed:
                log.info("retention: removed the logs of %d runs", removed)

    async def delete_events(self, before: datetime) -> int:
        total = 0
        while True:
            async with self.ctx.transaction() as session:
                oldest = (
                    select(EventModel.id)
                    .where(EventModel.created_at < before)
                    .order_by(EventModel.created_at)
                    .limit(EVENT_BATCH)
                )
                ids = list((await session.execute(oldest)).scalars())
                if ids:
                    await session.execute(delete(EventModel).where(EventModel.id.in_(ids)))
            total += len(ids)
            if len(ids) < EVENT_BATCH:
                return total

    async def remove_logs(self, finished_before: datetime, now: datetime) -> int:
        total = 0
        days = f"{self.ctx.settings.log_retention_days:g}"
        while True:
            async with self.ctx.transaction() as session:
                due = (
                    select(RunModel)
                    .where(
                        RunModel.logs_removed_at.is_(None),
                        RunModel.finished_at < finished_before,
                    )
                    .order_by(RunModel.finished_at)
                    .limit(RUN_BATCH)
                )
                runs = (await session.execute(due)).scalars().all()
                tasks = await run_tasks(session, [r.id for r in runs])
                for run in runs:
                    for task in tasks[run.id]:
                        self.ctx.backend.discard_logs(task_ref(task))
                    run.logs_removed_at = now
                    record_event(
                        session,
                        kind="retention",
                        message=f"task logs removed: finished over {days} days ago "
                        "(FLOTILLA_LOG_RETENTION_DAYS)",
                        actor=ACTOR,
                        now=now,
                        recipe_id=run.recipe_id,
                        run_id=run.id,
                    )
            total += len(runs)
            if len(runs) < RUN_BATCH:
                return total
