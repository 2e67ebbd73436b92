"""What a node has: its GPUs (from NVML when the NVIDIA driver is present, otherwise
as declared: `H100:8`, `H100:4,A100:2`), CPUs, memory and disk. The local backend
reads it for this machine; an agent reports it for its host in `hello`."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GpuDevice:
    index: int
    type: str
    memory_mib: int | None = None
    uuid: str | None = None


_FAMILY = re.compile(
    r"\b(B200|B100|GB200|H200|H100|H800|A100|A800|A10G|A10|A40|L40S|L40|L4|T4|V100|RTX\s?\w+)\b",
    re.I,
)


def gpu_type_from_name(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'H100'; unknown names keep their last word."""
    match = _FAMILY.search(name)
    if match:
        return match.group(1).replace(" ", "").upper()
    return name.replace("NVIDIA", "").strip().split()[-1].upper() if name.strip() else "GPU"


def parse_declared(declared: str) -> list[GpuDevice]:
    devices: list[GpuDevice] = []
    for part in filter(None, (p.strip() for p in declared.split(","))):
        kind, _, count = part.partition(":")
        if not kind or not count.isdigit():
            raise ValueError(f"FLOTILLA_LOCAL_GPUS: {part!r} is not TYPE:COUNT (e.g. H100:8)")
        devices += [GpuDevice(len(devices) + i, kind.upper()) for i in range(int(count))]
    return devices


@contextlib.contextmanager
def nvml() -> Iterator[Any]:
    """pynvml, initialised for the block; None when NVML or the driver is missing."""
    try:
        import pynvml
    except ImportError:
        yield None
        return
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver, no device
        yield None
        return
    try:
        yield pynvml
    finally:
        pynvml.nvmlShutdown()


def detect_nvml() -> list[GpuDevice] | None:
    """GPUs reported by NVML, or None when NVML or the driver is unavailable."""
    with nvml() as lib:
        if lib is None:
            return None
        devices = []
        for index in range(lib.nvmlDeviceGetCount()):
            handle = lib.nvmlDeviceGetHandleByIndex(index)
            name = lib.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            memory = lib.nvmlDeviceGetMemoryInfo(handle).total // (1024 * 1024)
            uuid = lib.nvmlDeviceGetUUID(handle)
            uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
            devices.append(GpuDevice(index, gpu_type_from_name(name), int(memory), uuid))
        return devices


def local_gpus(declared: str | None) -> tuple[list[GpuDevice], str]:
    """The inventory and where it came from ("nvml", "declared" or "none")."""
    detected = detect_nvml()
    if detected:
        return detected, "nvml"
    if declared:
        return parse_declared(declared), "declared"
    return [], "none"


def memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def host_inventory(declared_gpus: str | None, data_dir: str) -> dict[str, Any]:
    """This host as JSON for the agent's `hello`: GPUs, CPUs, memory, and the disk
    that holds the agent's data dir (where tasks' directories live)."""
    gpus, source = local_gpus(declared_gpus)
    try:
        disk = shutil.disk_usage(data_dir)
        disks = [{"path": data_dir, "total_bytes": disk.total, "free_bytes": disk.free}]
    except OSError:
        disks = []
    return {
        "gpus": [asdict(g) for g in gpus],
        "gpu_source": source,
        "cpus": os.cpu_count() or 1,
        "memory_bytes": memory_bytes(),
        "disks": disks,
    }
