"""Fleets (`/api/fleets`): each fleet's shape as its recipe asks, the size the
reconciler wants now, and its member nodes."""

from __future__ import annotations

from pydantic import Field

from flotilla.api.base import ApiModel


class FleetMember(ApiModel):
    name: str
    state: str
    reason: str
    instance_id: str | None
    busy: bool  # holds work now
    price_per_hour: float
    created_at: str
    ready_at: str | None
    idle_since: str | None
    interruption_deadline: str | None


class Fleet(ApiModel):
    id: str
    name: str
    owner: str
    version: int
    provider: str
    instance_type: str  # empty for provider: ssh
    region: str | None
    gpu_type: str | None  # None when the instance type has no offer
    gpus_per_node: int | None
    nodes: int | str = Field(description="as the recipe says: a count, or MIN..MAX")
    min: int
    max: int
    placement: str
    spot: bool
    idle_timeout: str | int
    spares: int
    status: str = Field(description="error, waiting, provisioning, scaling, ready or empty")
    reason: str  # empty when nothing is wrong
    desired: int = Field(description="the size the reconciler is heading for")
    size: int
    busy: int  # members holding work
    nodes_by_state: dict[str, int]
    price_per_hour: float  # the members' sum
    members: list[FleetMember]


class FleetList(ApiModel):
    fleets: list[Fleet]  # by name
