"""The control plane's copies of remote tasks' logs (`compute/agents/logmirror.py`):
pulled by offset, so nothing is copied twice or lost, even when pulls overlap (the
periodic pull and the one at a task's end) or a pull fails half way."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from pathlib import Path
from typing import Any

from flotilla.compute.agents.logmirror import LogMirror, mirror_files
from flotilla.compute.base import TaskRef
from flotilla.errors import TemporaryError

TASK = TaskRef("run1-0", "run1", 0, 0, "gpu-7")


class Agent:
    """A host's task logs, answering `read_log` like an agent (slowly, so that two
    pulls overlap), and failing when told to."""

    def __init__(self) -> None:
        self.logs = {"setup": b"", "main": b""}
        self.fail = False

    async def read_log(self, task_dir: str, name: str, offset: int, limit: int) -> dict[str, Any]:
        await asyncio.sleep(0.01)
        if self.fail:
            raise TemporaryError("node agent unreachable")
        data = self.logs[name][offset : offset + limit]
        return {"size": len(self.logs[name]), "data": base64.b64encode(data).decode()}


async def test_overlapping_pulls_copy_each_byte_once(tmp_path: Path) -> None:
    agent = Agent()
    mirror = LogMirror(tmp_path, agent.read_log)
    mirror.follow(TASK, "/srv/flotilla/runs/run1/attempt-0/rank-0")
    agent.logs["main"] = b"line 1\n"
    await asyncio.gather(mirror.pull(), mirror.pull_task(TASK.task_id), mirror.pull())
    main = mirror_files(tmp_path, TASK).main
    assert main.read_bytes() == b"line 1\n"
    agent.logs["main"] += b"line 2\n"
    agent.fail = True
    with contextlib.suppress(TemporaryError):
        await mirror.pull()
    agent.fail = False
    mirror.ended(TASK.task_id)
    await asyncio.gather(mirror.pull_task(TASK.task_id), mirror.pull())
    assert main.read_bytes() == b"line 1\nline 2\n"
    await mirror.pull()  # nothing new after the end: no longer followed
    assert TASK.task_id not in mirror.followed
