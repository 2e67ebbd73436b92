"""Parsing of the small value languages used in recipes: durations, memory sizes,
GPU requests (`H100:8`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|[KMGT])?\s*$", re.IGNORECASE)
_GPU = re.compile(r"^\s*(?:([A-Za-z][A-Za-z0-9_-]*)\s*:\s*)?(\d+)\s*$")


def parse_duration(value: str | int | float) -> float:
    """Seconds from `90`, `"90s"`, `"15m"`, `"2h"`, `"1d"`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration (examples: 30s, 15m, 2h, 1d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_memory(value: str | int) -> int:
    """Bytes from `"64Gi"`, `"512M"`, `"1T"` or a plain number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _MEMORY.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a memory size (examples: 512Mi, 64Gi)")
    unit = (match.group(2) or "").upper().rstrip("B").rstrip("I")
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit]
    return int(float(match.group(1)) * 1024**power)


@dataclass(frozen=True)
class GpuRequest:
    """`count` GPUs per node, of `type` (None: any type)."""

    type: str | None
    count: int

    def __str__(self) -> str:
        return f"{self.type}:{self.count}" if self.type else str(self.count)


def parse_gpu(value: str | int) -> GpuRequest:
    """`"H100:8"` → 8 H100s; `2` or `"2"` → 2 GPUs of any type."""
    match = _GPU.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a GPU request (examples: H100:8, A100:1, 2)")
    gpu_type = match.group(1).upper() if match.group(1) else None
    return GpuRequest(gpu_type, int(match.group(2)))
