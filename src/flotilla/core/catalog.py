"""The simulated cloud's catalog: regions and instance types with their GPUs and
prices per GPU-hour. Pure data: the `sim` provider (`compute/sim/`) offers these, and
the fleet recipe (`recipes/fleet.py`) rejects an unknown `provider: sim` instance type
when it is parsed. It lives in the core, not with the provider, because recipes sit
below compute: a recipe reading the provider's package would run the layers backwards.

Prices marked `published=True` are the figures given in the seed documents (H100
$3.90 on demand / $1.60 spot, H200 $4.29, MI300X $3.45 / $0.95); the others are
plausible figures for a simulation and are marked as such (`published=False`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    name: str
    location: str


REGIONS = (
    Region("us-east1", "Virginia"),
    Region("us-south1", "Texas"),
    Region("ca-east1", "Alberta"),
    Region("eu-iceland1", "Iceland"),
    Region("eu-norway1", "Norway"),
)


@dataclass(frozen=True)
class InstanceType:
    name: str
    gpu_type: str
    gpus: int
    gpu_memory_gib: int
    vcpus: int
    memory_gib: int
    on_demand_gpu_hour: float
    spot_gpu_hour: float | None
    infiniband: bool
    published: bool  # the price comes from the seed documents

    def price_per_hour(self, spot: bool = False) -> float:
        per_gpu = (
            self.spot_gpu_hour
            if spot and self.spot_gpu_hour is not None
            else self.on_demand_gpu_hour
        )
        return round(per_gpu * self.gpus, 4)


INSTANCE_TYPES = (
    InstanceType("h100-80gb-sxm-ib.8x", "H100", 8, 80, 176, 1440, 3.90, 1.60, True, True),
    InstanceType("h200-141gb-sxm-ib.8x", "H200", 8, 141, 176, 1920, 4.29, None, True, True),
    InstanceType("mi300x-192gb-ib.8x", "MI300X", 8, 192, 176, 2048, 3.45, 0.95, True, True),
    InstanceType("a100-80gb-sxm-ib.8x", "A100", 8, 80, 176, 1440, 1.95, 1.05, True, False),
    InstanceType("b200-180gb-sxm-ib.8x", "B200", 8, 180, 224, 2048, 5.95, 2.90, True, False),
    InstanceType("h100-80gb-pcie.1x", "H100", 1, 80, 22, 180, 3.90, 1.60, False, False),
    InstanceType("a100-80gb-pcie.1x", "A100", 1, 80, 22, 180, 1.95, 1.05, False, False),
    InstanceType("l40s-48gb.1x", "L40S", 1, 48, 16, 120, 1.10, 0.60, False, False),
)


def instance_type(name: str) -> InstanceType:
    for item in INSTANCE_TYPES:
        if item.name == name:
            return item
    known = ", ".join(i.name for i in INSTANCE_TYPES)
    raise KeyError(f"unknown instance type {name!r} (known: {known})")
