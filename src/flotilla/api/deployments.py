"""Deployments (`/api/deployments`): the recipe's identity and spec with its
replicas, the load balancer in front of them and the endpoints that reach it."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flotilla.api.base import ApiModel
from flotilla.api.load_balancers import Listener
from flotilla.core.status import RunStatus


class Replica(ApiModel):
    run_id: str
    number: int
    status: RunStatus
    version: int | None  # the recipe version it runs
    address: str | None
    ports: dict[str, Any] | None  # container port -> host port
    ready: bool
    not_ready_reason: str | None
    stopping: bool


class DeploymentLoadBalancer(ApiModel):
    status: str = Field(description="starting, serving or error")
    error: str | None
    listeners: list[Listener]


class Endpoints(ApiModel):
    http: str  # the front door's URL
    tcp: dict[str, str]  # container port -> host:port


class Deployment(ApiModel):
    id: str
    name: str
    owner: str
    project: str | None
    version: int
    spec: dict[str, Any]  # the deployment recipe's spec (`recipes/envelope.py`)
    status: str = Field(description="pending, running, stopping or stopped")
    stopped: bool
    desired_replicas: int | None
    restarts: int
    replicas: list[Replica]
    route_ports: dict[str, Any]
    load_balancer: DeploymentLoadBalancer
    endpoints: Endpoints


class DeploymentList(ApiModel):
    deployments: list[Deployment]
