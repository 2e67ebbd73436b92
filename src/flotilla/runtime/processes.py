"""Starting a task's processes and waiting for them as one gang; used by the supervisor.

A task runs one process per entry of its `process_env`, all in one process group
that the first process leads, so that one signal to the group reaches every process
and whatever they started. `wait_gang` reaps them in the order they end and reports
the first failure, so the supervisor can take the rest down (as torchrun does).
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

from flotilla.runtime.isolation.launch import Confinement, spawn_confined
from flotilla.runtime.taskspec import TaskSpec

# The supervisor handles or ignores these itself; the task's processes must start
# with the defaults, or a stop's SIGTERM would not end them.
DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGALRM, signal.SIGPIPE, signal.SIGINT, signal.SIGHUP)

NOT_STARTED = 127  # what shells report for a command that could not be executed


def command_line(spec: TaskSpec, env: dict[str, str]) -> tuple[str, list[str]]:
    """The program to execute and its argv: a list command as is, looked up on the
    task's PATH (no shell interprets it); a string command through bash."""
    if spec.argv is not None:
        program = shutil.which(spec.argv[0], path=env.get("PATH", os.defpath))
        if program is None:
            raise FileNotFoundError(f"{spec.argv[0]!r} not found on PATH")
        return program, spec.argv
    return "/bin/bash", ["/bin/bash", "-c", spec.shell or ""]


def spawn(
    program: str,
    argv: list[str],
    env: dict[str, str],
    log: Path,
    pgid: int,
    confinement: Confinement | None = None,
) -> int:
    """Start one process with stdout and stderr appended to `log`, in process group
    `pgid` (0: a new group that it leads), in the current working directory; with
    a `confinement`, inside the task's cgroup and as the task's user (see
    isolation/launch.py). Raises OSError if it cannot be started."""
    if confinement is not None:
        return spawn_confined(program, argv, env, confinement=confinement, log=str(log), pgid=pgid)
    # posix_spawn (vfork + exec) costs a fraction of fork + exec: it copies no
    # page tables, which matters when thousands of processes start at once.
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND  # several processes share the log
    return os.posix_spawn(
        program,
        argv,
        env,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 1, str(log), flags, 0o600),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setpgroup=pgid,
        setsigdef=DEFAULT_SIGNALS,
    )


def exit_code(status: int) -> int:
    """A wait status as an exit code; death by signal n is 128 + n, as shells say."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def wait_gang(pids: list[int], on_failure: Callable[[], None]) -> int:
    """Wait until every process in `pids` has ended. At the first one that fails
    (non-zero exit or a signal), call `on_failure` once. Returns the exit code of
    that first failure, or 0 if all succeeded. Must be the only one reaping: it
    waits for any child, to learn the order in which they end."""
    remaining = set(pids)
    first_failure = 0
    while remaining:
        try:
            pid, status = os.waitpid(-1, 0)  # retried by Python across signal handlers
        except ChildProcessError:  # nothing left to wait for (reaped elsewhere)
            break
        if pid not in remaining:
            continue
        remaining.discard(pid)
        code = exit_code(status)
        if code != 0 and first_failure == 0:
            first_failure = code
            on_failure()
    return first_failure
