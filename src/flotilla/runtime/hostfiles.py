"""What an agent serves from its host's disk beyond task state: chunks of a task's
logs (the control plane mirrors them, so they outlive the task and the node), the
task directories that still run (so a control plane can stop what it no longer
expects there), and the host's own basic environment for tasks.

Only files of task directories under the agent's runs directory are read.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from flotilla.runtime.procs import is_same_process, read_json
from flotilla.runtime.taskspec import TaskFiles

LOG_NAMES = ("setup", "main")
MAX_CHUNK = 4 * 1024 * 1024
# What a task inherits from its host when the control plane does not set it: enough
# to find programs; never the agent's own settings.
BASE_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


def _inside(runs_dir: Path, task_dir: str) -> Path:
    path = Path(os.path.realpath(task_dir))
    if not path.is_relative_to(os.path.realpath(runs_dir)):
        raise ValueError(f"{task_dir} is not a task directory of this agent")
    return path


def read_log(runs_dir: Path, task_dir: str, name: str, offset: int, limit: int) -> dict[str, Any]:
    """Up to `limit` bytes of the task's `setup` or `main` log from `offset`, and the
    file's size now (0 and no data while it does not exist)."""
    if name not in LOG_NAMES:
        raise ValueError(f"log {name!r}: one of {', '.join(LOG_NAMES)}")
    files = TaskFiles(_inside(runs_dir, task_dir))
    path = files.setup_log if name == "setup" else files.main_log
    try:
        # Not through a symlink: a task that can write its own directory could
        # otherwise make the agent serve any file it can read as the task's log.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return {"size": 0, "data": ""}
    except OSError as e:
        raise ValueError(f"{name}.log of {task_dir} is not a plain file: {e}") from e
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, offset))
        data = f.read(max(0, min(limit, MAX_CHUNK)))
    return {"size": size, "data": base64.b64encode(data).decode()}


def live_task_dirs(runs_dir: Path) -> list[str]:
    """Task directories (RUNS/run/attempt-N/rank-R) whose supervisor still runs."""
    live = []
    for supervisor in runs_dir.glob("*/attempt-*/rank-*/supervisor.json"):
        files = TaskFiles(supervisor.parent)
        record = read_json(files.supervisor)
        if record is None or files.result.exists():
            continue
        if is_same_process(int(record["pid"]), record.get("start_ticks")):
            live.append(str(files.dir))
    return sorted(live)


def with_host_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the host's PATH, locale and time zone where it sets none."""
    return {**{k: v for k, v in os.environ.items() if k in BASE_ENV}, **env}
