"""What SSH sessions leave running in a task (`nohup … &`): it lives as long as the
task and no longer, since it may hold the task's GPUs once they are someone
else's. Every process a session starts carries SESSION_MARK in its environment,
so a gateway that starts after a server restart finds what earlier sessions left
and adopts it (its task still runs) or kills it (its task is gone). A marked
process of a run this server does not know is another server's on the same machine
(tests, a second data directory): left alone, or starting one server would kill the
sessions of every other."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flotilla.runtime import proctree
from flotilla.server.db.models import RecipeModel, RunModel
from flotilla.server.ssh.targets import Target, running_task

if TYPE_CHECKING:
    from flotilla.server.context import ServerContext

SESSION_MARK = "FLOTILLA_SSH_SESSION"


async def adopt_leftovers(ctx: ServerContext) -> dict[Target, set[int]]:
    """The sessions (ids) that this server's earlier SSH sessions left, by their
    still running task; those whose task is gone are killed."""
    found = await asyncio.to_thread(_marked_sessions)
    adopted: dict[Target, set[int]] = {}
    orphans: list[int] = []
    async with ctx.sessions() as session:
        for (run_id, rank), sessions in found.items():
            run = await session.get(RunModel, run_id)
            if run is None:  # run ids are unique and runs never deleted: not ours
                continue
            recipe = await session.get(RecipeModel, run.recipe_id)
            target = await running_task(session, recipe, run, rank) if recipe else None
            if target is None:
                orphans += sessions
            else:
                adopted.setdefault(target, set()).update(sessions)
    await asyncio.to_thread(kill_sessions, orphans)
    return adopted


def kill_sessions(sessions: Iterable[int]) -> None:
    for pid in proctree.processes_in_sessions(sessions):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _marked_sessions() -> dict[tuple[str, int], set[int]]:
    """Sessions holding a marked process, by the (run id, rank) it was started in."""
    found: dict[tuple[str, int], set[int]] = {}
    for session_id, pids in proctree.processes_by_session().items():
        for pid in pids:
            env = proctree.environment(pid)
            if env and SESSION_MARK in env and env.get("FLOTILLA_RANK", "").isdigit():
                task = (env.get("FLOTILLA_RUN_ID", ""), int(env["FLOTILLA_RANK"]))
                found.setdefault(task, set()).add(session_id)
                break
    return found
