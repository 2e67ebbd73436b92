"""Process identity helpers. A pid alone is not an identity: after a reboot or a
long time it may belong to another process, so we pair it with its start time."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (the state) on, or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; split after it.
    return stat[stat.rindex(")") + 2 :].split()


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    fields = stat_fields(pid)
    if fields is None or fields[0] == "Z":  # a zombie has finished already
        return None
    return int(fields[19])


def is_same_process(pid: int, start_ticks: int | None) -> bool:
    ticks = process_start_ticks(pid)
    return ticks is not None and (start_ticks is None or ticks == start_ticks)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write so that readers see the old file or the whole new one, never half.

    No fsync: the rename is atomic against process crashes, which is what these
    files must survive; after a power loss the tasks are gone anyway, and an fsync
    per task would cost more than the rest of launching it."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data
