"""A task's cgroup fences off the node's other GPUs (`runtime/isolation/devices.py`):
device nodes with NVIDIA's major number stand in for GPUs (no driver here, so an
allowed one fails to open with ENXIO, a fenced one with EPERM), in a real task
cgroup made by `TaskCgroup`; and the server's launch gives each task its own GPUs
as the ones it may open."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flotilla.runtime.isolation import FULL, probe
from flotilla.runtime.isolation.cgroups import DEVICES, TaskCgroup, discover
from flotilla.runtime.isolation.devices import NVIDIA_MAJOR, deny_rules, nvidia_minors
from flotilla.runtime.taskspec import Limits

OPEN_BOTH = """
import errno, sys
for path in sys.argv[1:]:
    try:
        open(path, "rb").close()
        print("opened")
    except OSError as e:
        print(errno.errorcode[e.errno])
"""


def test_deny_rules_name_every_gpu_but_the_tasks() -> None:
    assert deny_rules([1], {0: 0, 1: 1, 2: 5}) == ["c 195:0 rwm", "c 195:5 rwm"]
    assert deny_rules([], {0: 0}) == ["c 195:0 rwm"]  # a CPU task opens no GPU
    assert deny_rules([0, 1], {0: 0, 1: 1}) == []


def test_without_nvml_the_device_nodes_are_the_gpus(tmp_path: Path) -> None:
    for name in ("nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm"):
        (tmp_path / name).touch()
    assert nvidia_minors(str(tmp_path)) == {0: 0, 3: 3}


@pytest.mark.skipif(probe().level != FULL, reason=f"isolation: {probe().summary()}")
def test_a_task_opens_its_own_gpu_and_not_the_others(tmp_path: Path) -> None:
    layout = discover()
    if DEVICES not in layout.bases:
        pytest.skip("no v1 devices controller: on pure cgroup v2 GPUs are not fenced")
    nodes = []
    for index, minor in ((0, 240), (1, 241)):
        node = tmp_path / f"gpu{index}"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(NVIDIA_MAJOR, minor))
        nodes.append(str(node))
    group = TaskCgroup.for_task(layout, f"flotest-{uuid.uuid4().hex[:8]}", "task")
    group.create(Limits(gpus=[0]), gpu_minors={0: 240, 1: 241})
    try:

        def join() -> None:
            for procs in group.procs_files:
                Path(procs).write_text("0")

        ran = subprocess.run(
            [sys.executable, "-c", OPEN_BOTH, *nodes],
            preexec_fn=join,  # only writes the cgroup files: safe in a forked child
            capture_output=True,
            text=True,
            check=True,
        )
        assert ran.stdout.split() == ["ENXIO", "EPERM"], ran
        outside = subprocess.run(
            [sys.executable, "-c", OPEN_BOTH, *nodes], capture_output=True, text=True, check=True
        )
        assert outside.stdout.split() == ["ENXIO", "ENXIO"]  # the fence is the cgroup's
    finally:
        assert group.remove(timeout=5)
        for parent in {d.parent for d in group.dirs.values()}:
            with contextlib.suppress(OSError):  # the agent group made for the test
                parent.rmdir()
