"""Nodes (`/api/nodes`): what each shows everyone — its GPUs and who holds them,
its state — and to admins its events."""

from __future__ import annotations

from pydantic import Field

from flotilla.api.base import ApiModel


class GpuHolder(ApiModel):
    run_id: str  # empty when the caller may not read that run
    job: str
    task: str


class NodeGpu(ApiModel):
    index: int
    type: str | None
    healthy: bool
    holder: GpuHolder | None


class GpuCounts(ApiModel):
    total: int
    free: int  # healthy and unheld
    held: int
    unhealthy: int


class Node(ApiModel):
    id: str
    name: str
    provider: str
    fleet: str | None  # None also when the caller may not read the fleet
    fleet_id: str | None
    instance_id: str | None
    instance_type: str | None
    region: str | None
    spot: bool
    state: str
    reason: str | None
    address: str | None
    gpu_type: str | None
    gpus: list[NodeGpu]
    gpu_counts: GpuCounts
    cpus: int | None
    memory_bytes: int | None
    labels: dict[str, object]
    price_per_hour: float | None
    created_at: str | None
    age_seconds: int
    ready_at: str | None
    idle_since: str | None
    interruption_deadline: str | None
    terminated_at: str | None


class Event(ApiModel):
    time: str
    kind: str
    message: str
    actor: str | None
    run_id: str | None


class NodeDetail(Node):
    events: list[Event] = Field(description="oldest first; admins only (empty for others)")


class NodeList(ApiModel):
    nodes: list[Node]


class NodeActionRequest(ApiModel):
    reason: str | None = Field(default=None, max_length=1000, description="why; kept in the event")


class TrustRequest(ApiModel):
    """Everyone trusted on the node, replacing who was before (empty: nobody)."""

    users: list[str] = Field(default_factory=list, max_length=1000)
    groups: list[str] = Field(default_factory=list, max_length=1000)
