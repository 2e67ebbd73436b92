"""Read a task's state from its files on disk. This is the source of truth that
survives restarts of both the server and the agent."""

from __future__ import annotations

from flotilla.runtime.procs import is_same_process, read_json
from flotilla.runtime.taskspec import EXITED, LOST, RUNNING, SETUP, UNKNOWN, TaskFiles, TaskState


def inspect_task(task_id: str, task_dir: str) -> TaskState:
    files = TaskFiles(task_dir)
    result = read_json(files.result)
    started = read_json(files.started) or {}
    if result is not None:
        return TaskState(
            task_id,
            EXITED,
            pid=started.get("pid"),
            started_at=started.get("started_at"),
            finished_at=result.get("finished_at"),
            exit_code=result.get("exit_code"),
            stopped=bool(result.get("stopped")),
            message=str(result.get("message") or ""),
        )
    supervisor = read_json(files.supervisor)
    if supervisor is None:
        # Launched (the directory exists) but the supervisor has not written its
        # pid yet, or never launched at all.
        return TaskState(task_id, SETUP if files.dir.exists() else UNKNOWN)
    if not is_same_process(int(supervisor["pid"]), supervisor.get("start_ticks")):
        return TaskState(
            task_id,
            LOST,
            pid=started.get("pid"),
            started_at=started.get("started_at"),
            message="the task's supervisor ended without recording a result",
        )
    if started:
        return TaskState(
            task_id, RUNNING, pid=started.get("pid"), started_at=started.get("started_at")
        )
    return TaskState(task_id, SETUP)
