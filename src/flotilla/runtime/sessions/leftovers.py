"""What SSH sessions leave running in a task (`nohup … &`): it lives as long as the
task and no longer, since it may hold the task's GPUs once they are someone
else's. Every process a session starts carries SESSION_MARK in its environment
(its value: the task's run id and rank), so whoever starts after a restart — the
control plane's gateway (`server/ssh/leftovers.py`), a host's session relay
(`relay.py`) — finds what earlier sessions left and adopts or kills it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterable

from flotilla.runtime import proctree
from flotilla.runtime.sessions.target import Target

SESSION_MARK = "FLOTILLA_SSH_SESSION"


class SessionBook:
    """The sessions (by id) started in each task, kept after they end: what they
    left running is killed once the task stops (`reap`)."""

    def __init__(self, sessions: dict[Target, set[int]] | None = None) -> None:
        self.sessions = sessions or {}

    def remember(self, target: Target, session_id: int) -> None:
        self.sessions.setdefault(target, set()).add(session_id)

    async def reap(self) -> None:
        stopped = [t for t in self.sessions if not t.is_running()]
        if stopped:
            leftovers = [sid for t in stopped for sid in self.sessions.pop(t)]
            await asyncio.to_thread(kill_sessions, leftovers)


def kill_sessions(sessions: Iterable[int]) -> None:
    for pid in proctree.processes_in_sessions(sessions):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def marked_sessions() -> dict[tuple[str, int], set[int]]:
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
