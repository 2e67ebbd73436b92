"""GPU health from NVML, read by a node's agent at every heartbeat: temperature
against the GPU's own slowdown threshold, uncorrected ECC errors since the driver
loaded, and critical XID events since the last read. A GPU is unhealthy on an
uncorrected ECC error, a critical XID (the ones NVIDIA's documentation says need a
reset or a node drain), or a temperature at or above its slowdown threshold.

Without NVML (no driver, no `pynvml`) there is nothing to read: `GpuHealth.open()`
returns None and the agent reports no health, never a healthy guess.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# XIDs that mean the GPU (or its memory) needs a reset: double-bit ECC (48), row
# remapping failures (63, 64), NVLink errors (74), fallen off the bus (79), high
# single-bit ECC rate (92), contained/uncontained ECC errors (94, 95).
CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95})


@dataclass(frozen=True)
class GpuReading:
    index: int
    temperature_c: int | None
    slowdown_c: int | None
    ecc_uncorrected: int | None
    xids: tuple[int, ...]  # critical XIDs seen since the last reading

    @property
    def problem(self) -> str:
        """Why the GPU is unhealthy; empty when it is not."""
        if self.ecc_uncorrected:
            return f"{self.ecc_uncorrected} uncorrected ECC error(s)"
        if self.xids:
            return f"XID {', '.join(str(x) for x in self.xids)}"
        if (
            self.temperature_c is not None
            and self.slowdown_c
            and (self.temperature_c >= self.slowdown_c)
        ):
            return f"{self.temperature_c} °C, at its slowdown threshold of {self.slowdown_c} °C"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "xids": list(self.xids), "problem": self.problem}


class GpuHealth:
    def __init__(self, nvml: Any, handles: list[Any], events: Any) -> None:
        self.nvml = nvml
        self.handles = handles
        self.events = events  # an NVML event set for critical XIDs, or None

    @classmethod
    def open(cls) -> GpuHealth | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            handles = [
                pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())
            ]
        except Exception:  # NVMLError: no driver, no device
            return None
        if not handles:
            return None
        events = None
        try:
            events = pynvml.nvmlEventSetCreate()
            for handle in handles:
                pynvml.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, events
                )
        except Exception:  # some GPUs (or containers) do not deliver events
            events = None
        return cls(pynvml, handles, events)

    def read(self) -> list[GpuReading]:
        xids = self._drain_xids()
        return [
            GpuReading(
                index,
                self._call("nvmlDeviceGetTemperature", handle, self._const("NVML_TEMPERATURE_GPU")),
                self._call(
                    "nvmlDeviceGetTemperatureThreshold",
                    handle,
                    self._const("NVML_TEMPERATURE_THRESHOLD_SLOWDOWN"),
                ),
                self._call(
                    "nvmlDeviceGetTotalEccErrors",
                    handle,
                    self._const("NVML_MEMORY_ERROR_TYPE_UNCORRECTED"),
                    self._const("NVML_VOLATILE_ECC"),
                ),
                tuple(sorted(xids.get(index, set()))),
            )
            for index, handle in enumerate(self.handles)
        ]

    def _drain_xids(self) -> dict[int, set[int]]:
        found: dict[int, set[int]] = {}
        if self.events is None:
            return found
        while True:
            try:
                event = self.nvml.nvmlEventSetWait(self.events, 0)  # 0 ms: never blocks
            except Exception:  # NVML_ERROR_TIMEOUT: no more events
                return found
            code = int(event.eventData)
            if code in CRITICAL_XIDS and event.device in self.handles:
                found.setdefault(self.handles.index(event.device), set()).add(code)

    def _call(self, name: str, *args: Any) -> int | None:
        try:
            return int(getattr(self.nvml, name)(*args))
        except Exception:  # not supported on this GPU (ECC off, no threshold)
            return None

    def _const(self, name: str) -> Any:
        return getattr(self.nvml, name, 0)
