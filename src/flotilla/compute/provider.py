"""The provider interface: where nodes come from (a cloud, this machine, a
simulated cloud). One small surface the fleet reconciler drives.

Contract for every method:
- `offers()`, `capacity()` and `cluster_capacity()` are cheap, never block and
  never fail, so they may be called while validating a request.
- `create_instances()` is all-or-nothing. `CapacityError` (a `TemporaryError`)
  means "not now, try later or elsewhere": a stock-out, or no InfiniBand network
  with enough free slices. `ProviderError` means the request can never work
  (unknown instance type or region). Calling it twice with the same
  `request_id` returns the same instances, so a retry after a crash provisions
  nothing twice.
- `terminate()` is idempotent: terminating an already gone instance is fine.
- `poll(now)` returns what happened since the last poll (an instance became
  ready or failed, a spot interruption notice arrived). It never blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol

from flotilla.core.topology import Node
from flotilla.errors import FlotillaError, TemporaryError


class ProviderError(FlotillaError):
    """A request the provider can never fulfil as made."""


class CapacityError(TemporaryError):
    """No capacity now (stock-out, not enough InfiniBand slices): retry later."""


@dataclass(frozen=True)
class Offer:
    instance_type: str
    region: str
    gpu_type: str
    gpus: int
    on_demand_per_hour: float
    spot_per_hour: float | None
    available: int  # instances that could be created now
    price_published: bool


class InstanceState(StrEnum):
    PROVISIONING = "provisioning"
    READY = "ready"
    FAILED = "failed"
    TERMINATED = "terminated"


@dataclass
class Instance:
    id: str
    instance_type: str
    region: str
    spot: bool
    state: InstanceState
    created_at: datetime
    ready_at: datetime
    node: Node  # its topology labels and GPU count
    price_per_hour: float
    interruption_deadline: datetime | None = None
    labels: dict[str, str] = field(default_factory=dict)


class EventKind(StrEnum):
    READY = "ready"
    FAILED = "failed"  # the node is gone: its work must be requeued
    GPU_FAILED = "gpu_failed"  # one GPU is unhealthy
    INTERRUPTION_NOTICE = "interruption_notice"  # spot: drain before the deadline
    TERMINATED = "terminated"


@dataclass(frozen=True)
class ProviderEvent:
    kind: EventKind
    instance_id: str
    at: datetime
    detail: str = ""
    deadline: datetime | None = None
    gpu: int | None = None  # GPU_FAILED: the index of the GPU that failed


class Provider(Protocol):
    name: str

    def offers(self, gpu_type: str | None = None, region: str | None = None) -> list[Offer]:
        """Instance types with prices and how many could be created now."""

    def capacity(self, instance_type: str, region: str) -> int:
        """How many instances of this type could be created in the region now."""

    def cluster_capacity(self, instance_type: str, region: str) -> int:
        """The most instances of this type that one InfiniBand partition of the region
        can take now: the largest `count` for which `create_instances(...,
        cluster=True)` would not raise `CapacityError` at this moment (0 when out of
        stock). A type outside the fabric has no partitions; its answer is
        `capacity()`. Unknown types or regions answer 0. A hint for failing fast,
        not a reservation: capacity may be gone by the time instances are created."""

    def create_instances(
        self,
        request_id: str,
        instance_type: str,
        region: str,
        count: int,
        spot: bool,
        cluster: bool,
        now: datetime,
    ) -> list[Instance]:
        """Create `count` instances at once (all or none). With `cluster`, all in one
        InfiniBand partition. Returns them in `provisioning` state."""

    def terminate(self, instance_id: str, now: datetime) -> None:
        """Release the instance. Idempotent."""

    def poll(self, now: datetime) -> list[ProviderEvent]:
        """Events since the last poll, oldest first."""
