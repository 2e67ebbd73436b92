"""Virtual execution, for scale runs: a task on a virtual node is not run. It
"runs" for the time its recipe gives and then exits, through the same server path
as any task (scheduler, supervision, metering, events), so 10,000 nodes and
100,000 runs fit on one machine. The simulated cloud's nodes execute this way with
`FLOTILLA_SIM_VIRTUAL=1`; the router (`compute/agents/router.py`) sends such
launches here (`LaunchRequest.virtual`).

How long a task takes and how it ends, from its environment (the recipe's
`environment_variables`) or its command:
- `FLOTILLA_VIRTUAL_SECONDS`: the seconds it runs (a number), else a leading
  `sleep N` of the command (`sleep 120`, `sleep 120; python train.py`), else 0;
- `FLOTILLA_VIRTUAL_EXIT_CODE`: its exit code, 0 by default.

A stop ends a task at once with -15, as SIGTERM would. Tasks live in this
process's memory while they run and for `KEEP_ENDED_SECONDS` after (supervision
records an end from its event, or from its next `observe`), so memory follows
the tasks running, not the history. A restarted server does not know them, and
supervision relaunches them from the start, as it does tasks a node has lost."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from flotilla.compute.base import (
    LaunchRequest,
    LogFiles,
    NodeInventory,
    TaskEventHandler,
    TaskRef,
    Workload,
)
from flotilla.runtime.taskspec import EXITED, RUNNING, UNKNOWN, TaskState

log = logging.getLogger("flotilla.virtual")
SECONDS_VAR = "FLOTILLA_VIRTUAL_SECONDS"
EXIT_CODE_VAR = "FLOTILLA_VIRTUAL_EXIT_CODE"
STOPPED_EXIT_CODE = -15
KEEP_ENDED_SECONDS = 120.0
# `sleep 120`, `sleep 1.5 && …`: the first word of the command and its number.
_SLEEP = re.compile(r"\s*sleep\s+(\d+(?:\.\d+)?)(?:\s|;|&|$)")
LOG_TEXT = (
    "This task ran on a virtual node (FLOTILLA_SIM_VIRTUAL): its command was not run, "
    "so it has no output. It took the time its recipe gives (FLOTILLA_VIRTUAL_SECONDS, "
    "or a leading `sleep N`) and exited with FLOTILLA_VIRTUAL_EXIT_CODE (0).\n"
)


@dataclass(frozen=True)
class Timing:
    seconds: float
    exit_code: int


def timing(request: LaunchRequest) -> Timing:
    """How long the task runs and how it ends (see the module's docstring). A
    value that is not a number is ignored, as the command would not read it."""
    seconds = _number(request.env.get(SECONDS_VAR))
    if seconds is None:
        seconds = _leading_sleep(request.workload)
    code = _number(request.env.get(EXIT_CODE_VAR))
    return Timing(max(0.0, seconds or 0.0), int(code) if code is not None else 0)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _leading_sleep(workload: Workload) -> float | None:
    if workload.argv:
        argv = workload.argv
        return _number(argv[1]) if len(argv) > 1 and argv[0] == "sleep" else None
    match = _SLEEP.match(workload.shell or "")
    return float(match.group(1)) if match else None


class VirtualBackend:
    name = "virtual"

    def __init__(self, logs_root: Path) -> None:
        self.log_file = logs_root / "virtual.log"
        self._on_event: TaskEventHandler | None = None
        self._states: dict[str, TaskState] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        # Ended tasks in the order they ended, forgotten KEEP_ENDED_SECONDS later.
        self._ended: dict[str, float] = {}
        self._emitting: set[asyncio.Task[None]] = set()

    async def start(self, on_event: TaskEventHandler) -> None:
        self._on_event = on_event
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        if not self.log_file.exists():
            self.log_file.write_text(LOG_TEXT)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for emitting in list(self._emitting):
            emitting.cancel()

    def holds(self, task: TaskRef) -> bool:
        return task.task_id in self._states

    @property
    def running(self) -> int:
        return len(self._timers)

    async def launch(self, request: LaunchRequest) -> None:
        task_id = request.task.task_id
        self._forget_old_ends()
        if task_id in self._states:
            return  # idempotent: launched already
        how = timing(request)
        state = TaskState(task_id, RUNNING, started_at=time.time())
        self._states[task_id] = state
        loop = asyncio.get_running_loop()
        self._timers[task_id] = loop.call_later(how.seconds, self._end, task_id, how.exit_code)
        await self._emit(state)

    async def stop(self, task: TaskRef, grace_seconds: float) -> None:
        state = self._states.get(task.task_id)
        if state is None or state.phase != RUNNING:
            return
        self._end(task.task_id, STOPPED_EXIT_CODE, stopped=True)

    async def observe(self, tasks: list[TaskRef]) -> list[TaskState]:
        self._forget_old_ends()
        return [self._states.get(t.task_id) or TaskState(t.task_id, UNKNOWN) for t in tasks]

    def log_files(self, task: TaskRef) -> LogFiles:
        return LogFiles(setup=self.log_file, main=self.log_file)

    def discard_logs(self, task: TaskRef) -> None:
        pass  # its one log file says what virtual execution is, for every task

    def nodes(self) -> list[NodeInventory]:
        return []  # virtual nodes are the provider's: their rows come from it

    def host_note(self, workload: Workload) -> str | None:
        return None  # the scheduler says which nodes are virtual, by name

    def _end(self, task_id: str, exit_code: int, stopped: bool = False) -> None:
        timer = self._timers.pop(task_id, None)
        if timer is not None:
            timer.cancel()
        state = self._states.get(task_id)
        if state is None or state.phase != RUNNING:
            return
        ended = TaskState(
            task_id,
            EXITED,
            started_at=state.started_at,
            finished_at=time.time(),
            exit_code=exit_code,
            stopped=stopped,
        )
        self._states[task_id] = ended
        self._ended[task_id] = time.monotonic()
        emitting = asyncio.get_running_loop().create_task(self._emit(ended))
        self._emitting.add(emitting)
        emitting.add_done_callback(self._emitted)

    def _emitted(self, emitting: asyncio.Task[None]) -> None:
        self._emitting.discard(emitting)
        with contextlib.suppress(asyncio.CancelledError):
            if (error := emitting.exception()) is not None:
                log.warning("a virtual task's end was not delivered: %r", error)

    def _forget_old_ends(self) -> None:
        horizon = time.monotonic() - KEEP_ENDED_SECONDS
        for task_id, ended_at in list(self._ended.items()):
            if ended_at > horizon:
                break  # in the order they ended: the rest are newer
            del self._ended[task_id]
            self._states.pop(task_id, None)

    async def _emit(self, state: TaskState) -> None:
        if self._on_event is not None:
            await self._on_event(state)
