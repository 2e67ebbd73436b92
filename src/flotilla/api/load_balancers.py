"""Load balancers (`/api/load_balancers`): each one's recipe spec and what its data
plane reports now: listeners, their backends' state, connections, bytes and
health history; and the network policy (`/api/load_balancers/policy`), whose
CIDRs are checked with the data plane's parser (`services/serving/lb_policy.py`
applies it)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from flotilla.api.base import ApiModel
from flotilla.lb.config import parse_cidrs


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


class LoadBalancerPolicy(ApiModel):
    """What platform admins allow the load balancers of everyone else."""

    allowed_backend_cidrs: list[str] = Field(
        default_factory=list,
        description="backend ranges non-admins may use although refused by default "
        "(e.g. 127.0.0.0/8 for services on this machine)",
    )
    allowed_listen_cidrs: list[str] = Field(
        default_factory=list,
        description="addresses non-admins may listen on besides the server's own and loopback",
    )
    allow_wildcard_listen: bool = Field(
        False, description="let non-admins listen on 0.0.0.0 or :: (every interface)"
    )

    @field_validator("allowed_backend_cidrs", "allowed_listen_cidrs")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        return parse_cidrs(values)
