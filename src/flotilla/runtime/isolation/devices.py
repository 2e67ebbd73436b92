"""A task's GPUs fenced by its cgroup: the NVIDIA device nodes of the node's other
GPUs cannot be opened from the task (EPERM), whatever `CUDA_VISIBLE_DEVICES` says,
so a task cannot take a GPU the scheduler gave someone else.

Through the v1 `devices` controller (a `c 195:MINOR rwm` deny rule per GPU that is
not the task's; the control device `nvidiactl` (255) and `nvidia-uvm` stay open,
CUDA needs them). A GPU's minor number is NVML's (`nvmlDeviceGetMinorNumber`), or,
without NVML, the N of `/dev/nvidiaN` taken as index N. Pure cgroup v2 fences
devices only with a BPF program, which the agent does not load: there the GPUs are
not fenced, and the node's probe says so.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping

from flotilla.runtime.inventory import nvml

NVIDIA_MAJOR = 195
_GPU_NODE = re.compile(r"nvidia(\d+)")


def deny_rules(allowed: Collection[int], minors: Mapping[int, int]) -> list[str]:
    """The `devices.deny` lines for the GPUs (index -> minor) not in `allowed`."""
    return [
        f"c {NVIDIA_MAJOR}:{minor} rwm" for i, minor in sorted(minors.items()) if i not in allowed
    ]


def nvidia_minors(dev: str = "/dev") -> dict[int, int]:
    """This node's GPUs, index -> device minor number."""
    found = _nvml_minors()
    if found is not None:
        return found
    try:
        names = os.listdir(dev)
    except OSError:
        return {}
    return {int(m[1]): int(m[1]) for n in names if (m := _GPU_NODE.fullmatch(n))}


def _nvml_minors() -> dict[int, int] | None:
    with nvml() as lib:
        if lib is None:
            return None
        handles = [lib.nvmlDeviceGetHandleByIndex(i) for i in range(lib.nvmlDeviceGetCount())]
        return {i: int(lib.nvmlDeviceGetMinorNumber(h)) for i, h in enumerate(handles)}
