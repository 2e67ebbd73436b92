"""Jobs: their schedule must be one this server runs (its minimum interval)."""

from __future__ import annotations

from flotilla.recipes.types import JOB
from flotilla.server.changes import Change
from flotilla.server.kinds.base import Applying, Kind
from flotilla.server.services import recipes as recipe_service


class JobKind(Kind):
    type = JOB
    changes = (Change.SCHEDULES,)

    async def check(self, applying: Applying) -> None:
        if applying.changed:
            schedule = recipe_service.enabled_schedule(applying.recipe)
            recipe_service.check_schedule(schedule, applying.ctx.settings.min_schedule_interval)
