"""What SSH sessions into this machine's tasks left running (`runtime/sessions/
leftovers.py`), found when the gateway starts after a server restart: adopted
(its task still runs) or killed (its task is gone). A marked
process of a run this server does not know is another server's on the same machine
(tests, a second data directory): left alone, or starting one server would kill the
sessions of every other."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from flotilla.runtime.sessions.leftovers import kill_sessions, marked_sessions
from flotilla.runtime.sessions.target import Target
from flotilla.server.db.models import RecipeModel, RunModel
from flotilla.server.ssh.targets import running_task

if TYPE_CHECKING:
    from flotilla.server.context import ServerContext


async def adopt_leftovers(ctx: ServerContext) -> dict[Target, set[int]]:
    """The sessions (ids) that this server's earlier SSH sessions left, by their
    still running task; those whose task is gone are killed."""
    found = await asyncio.to_thread(marked_sessions)
    adopted: dict[Target, set[int]] = {}
    orphans: list[int] = []
    async with ctx.sessions() as session:
        for (run_id, rank), sessions in found.items():
            run = await session.get(RunModel, run_id)
            if run is None:  # run ids are unique and runs never deleted: not ours
                continue
            recipe = await session.get(RecipeModel, run.recipe_id)
            target = await running_task(session, recipe, run, rank) if recipe else None
            if target is not None and not isinstance(target, Target):
                continue  # it runs on another host: that host's relay keeps its sessions
            if target is None:
                orphans += sessions
            else:
                adopted.setdefault(target, set()).update(sessions)
    await asyncio.to_thread(kill_sessions, orphans)
    return adopted
