"""Load balancers (`/api/load_balancers`): each one's recipe spec and what its data
plane reports now: listeners, their backends' state, connections, bytes and
health history. (The network policy, `/api/load_balancers/policy`, is
`services/lb_policy.LoadBalancerPolicy`, which validates its CIDRs with the data
plane's parser.)"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flotilla.api.base import ApiModel


class Probe(ApiModel):
    at: float  # Unix time
    ok: bool
    state: str  # the backend's, after this probe
    error: str | None


class Transition(ApiModel):
    at: float
    old: str
    new: str


class Backend(ApiModel):
    key: str
    address: str
    port: int
    state: str = Field(description="online, offline or draining")
    active_connections: int
    total_connections: int
    bytes_in: int  # client to backend
    bytes_out: int  # backend to client
    failed_connects: int
    health_checks: int
    health_checks_failed: int
    health_history: list[Probe]  # the latest probes, oldest first
    transitions: list[Transition]


class Listener(ApiModel):
    host: str
    port: int
    algorithm: str
    draining: bool
    accepted: int
    refused: int  # by the allow-list
    no_backend: int  # accepted with no backend online
    active_connections: int
    backends: list[Backend]


class LoadBalancer(ApiModel):
    id: str
    name: str
    owner: str
    project: str | None
    spec: dict[str, Any] = Field(description="the load_balancer recipe's spec, as applied")
    status: str = Field(description="starting, serving or error")
    error: str | None  # why it does not serve (a listener that cannot bind)
    listeners: list[Listener]  # empty until it serves


class LoadBalancerList(ApiModel):
    load_balancers: list[LoadBalancer]  # by name
