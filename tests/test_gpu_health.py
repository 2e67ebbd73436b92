"""GPU health from NVML (issue 12, item 6), read by an agent at every heartbeat. No
GPU here: the NVML calls are answered by a stand-in with NVML's names and shapes
(the real `pynvml` is the same module surface), and what the node reconciler does
with a reading is checked on a node row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from flotilla.runtime.gpuhealth import GpuHealth, GpuReading
from flotilla.server.db.models import NodeModel
from flotilla.server.services.fleets.agent_nodes import apply_inventory


class NvmlError(Exception):
    pass


@dataclass
class Event:
    device: Any
    eventData: int


@dataclass
class FakeNvml:
    temperatures: list[int]
    ecc: list[int | None]
    pending: list[Event] = field(default_factory=list)
    NVML_TEMPERATURE_GPU = 0
    NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0

    def nvmlDeviceGetTemperature(self, handle: int, sensor: int) -> int:
        return self.temperatures[handle]

    def nvmlDeviceGetTemperatureThreshold(self, handle: int, kind: int) -> int:
        assert kind == self.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN
        return 87

    def nvmlDeviceGetTotalEccErrors(self, handle: int, kind: int, counter: int) -> int:
        value = self.ecc[handle]
        if value is None:
            raise NvmlError("NVML_ERROR_NOT_SUPPORTED")  # ECC off on this GPU
        return value

    def nvmlEventSetWait(self, events: object, timeout_ms: int) -> Event:
        assert timeout_ms == 0  # a heartbeat never blocks on NVML
        if not self.pending:
            raise NvmlError("NVML_ERROR_TIMEOUT")
        return self.pending.pop(0)


def test_readings_name_ecc_errors_critical_xids_and_heat() -> None:
    nvml = FakeNvml(temperatures=[40, 90, 50, 45], ecc=[0, 0, 2, None])
    nvml.pending = [Event(1, 13), Event(3, 79), Event(3, 79)]  # 13 is an app error, not critical
    health = GpuHealth(nvml, [0, 1, 2, 3], events=object())
    readings = health.read()
    assert [r.problem for r in readings] == [
        "",
        "90 °C, at its slowdown threshold of 87 °C",
        "2 uncorrected ECC error(s)",
        "XID 79",
    ]
    assert readings[3].ecc_uncorrected is None  # unsupported is unknown, not zero
    # XIDs are reported once: the next heartbeat has none left.
    assert [r.xids for r in health.read()] == [(), (), (), ()]


def test_without_nvml_there_is_no_health_to_report() -> None:
    assert GpuHealth.open() is None  # no driver on this machine (pynvml or not)


def _node(gpus: int) -> NodeModel:
    return NodeModel(
        id="n1",
        name="gpu-7",
        provider="agent",
        state="ready",
        gpus=[{"index": i, "healthy": True} for i in range(gpus)],
        labels={},
        created_at=datetime.now(UTC),
    )


def _hello(problems: dict[int, str]) -> dict[str, Any]:
    gpus = [{"index": i, "type": "H100"} for i in range(2)]
    health = [
        {**GpuReading(i, 40, 87, 0, ()).to_dict(), "problem": problems.get(i, "")} for i in range(2)
    ]
    return {"inventory": {"gpus": gpus, "cpus": 8}, "gpu_health": health}


def test_an_unhealthy_gpu_is_marked_once_and_stays_unhealthy() -> None:
    node = _node(2)
    assert apply_inventory(node, _hello({})) == {}
    assert apply_inventory(node, _hello({1: "XID 79"})) == {1: "XID 79"}
    assert [g["healthy"] for g in node.gpus] == [True, False]
    # Reported again, or healthy again by NVML: no new event, and it stays out.
    assert apply_inventory(node, _hello({1: "XID 79"})) == {}
    assert apply_inventory(node, _hello({})) == {}
    assert [g["healthy"] for g in node.gpus] == [True, False]
