"""Copies of remote tasks' logs on the control plane, so that they are readable while
the task runs and after the task, and even its node, are gone.

Pull, not push: the control plane asks the agent for what follows the bytes it
already has (`read_log` from the local file's size). A lost connection, an agent
restart or a control-plane restart loses nothing: the next pull continues where the
local copy ends. A task is followed from its launch (or from the first time it is
seen after a restart) until a pull after its end brings nothing new.
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flotilla.compute import paths
from flotilla.compute.base import LogFiles, TaskRef
from flotilla.runtime.taskspec import TaskFiles

ReadLog = Callable[[str, str, int, int], Awaitable[dict[str, Any]]]
CHUNK = 1024 * 1024


def mirror_files(logs_root: Path, task: TaskRef) -> LogFiles:
    files = TaskFiles(paths.task_dir(str(logs_root), task.run_id, task.attempt, task.rank))
    return LogFiles(setup=files.setup_log, main=files.main_log)


@dataclass
class _Followed:
    remote_dir: str
    local: LogFiles
    ended: bool = False
    # One pull at a time: the periodic pull and the one at a task's end would
    # otherwise both copy from the same offset, and the copy would hold it twice.
    pulling: asyncio.Lock = field(default_factory=asyncio.Lock)
    offsets: dict[str, int] = field(default_factory=dict)  # log name -> bytes read


class LogMirror:
    def __init__(self, logs_root: Path, read_log: ReadLog) -> None:
        self.logs_root = logs_root
        self.read_log = read_log  # (remote task dir, "setup"|"main", offset, limit)
        self.followed: dict[str, _Followed] = {}  # task id -> what to copy

    def follow(self, task: TaskRef, remote_dir: str) -> None:
        if task.task_id not in self.followed:
            local = mirror_files(self.logs_root, task)
            self.followed[task.task_id] = _Followed(remote_dir, local)

    def ended(self, task_id: str) -> None:
        """The task has ended: one more pull, then it is no longer followed."""
        if (item := self.followed.get(task_id)) is not None:
            item.ended = True

    async def pull(self) -> None:
        """Copy what is new of every followed task. Raises what the agent call
        raises (the node is unreachable): the copies stay where they were."""
        for task_id in list(self.followed):
            await self.pull_task(task_id)

    async def pull_task(self, task_id: str) -> None:
        """Copy what is new of one task (at its end: before its end is reported,
        so a finished run's logs are whole when it shows as finished)."""
        item = self.followed.get(task_id)
        if item is None:
            return
        async with item.pulling:
            ended = item.ended  # read before the pull: an end seen later pulls again
            new = 0
            for name, local in (("setup", item.local.setup), ("main", item.local.main)):
                new += await self._pull_one(item, name, local)
            if ended and new == 0:
                self.followed.pop(task_id, None)

    async def _pull_one(self, item: _Followed, name: str, local: Path) -> int:
        copied = 0
        while True:
            # Where the node's file was read up to: the copy's size, unless the task
            # truncated its log since (then the copy is longer than the file).
            offset = item.offsets.setdefault(name, _size(local))
            answer = await self.read_log(item.remote_dir, name, offset, CHUNK)
            if int(answer["size"]) < offset:
                _append(local, b"\n[flotilla: the task truncated this log here]\n")
                item.offsets[name] = 0
                continue
            data = base64.b64decode(answer["data"])
            if not data:
                return copied
            _append(local, data)
            item.offsets[name] = offset + len(data)
            copied += len(data)
            if offset + len(data) >= int(answer["size"]):
                return copied


# Small local file operations, done on the event loop: a log chunk is at most 1 MiB.
def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _append(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as f:
        f.write(data)
