"""Configuration of one L4 load balancer: listeners, their backends, the balancing
algorithm, a source allow-list and the TCP health check.

Plain pydantic models, no I/O beyond `read_config`: the server's `load_balancer`
resource validates with them, `LoadBalancer.apply` consumes them, and
`haproxy.render` turns the same object into an HAProxy configuration. Health-check
defaults follow the managed load balancer contract (timeout 5 s, interval 5 s,
success count 3, failure count 2).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flotilla.errors import ClientError, FieldProblem


class Algorithm(StrEnum):
    SOURCE_IP_HASH = "source_ip_hash"  # consistent (rendezvous) hash of the client IP
    ROUND_ROBIN = "round_robin"
    LEAST_CONNECTIONS = "least_connections"


class HealthCheck(BaseModel):
    """A TCP connect probe: every `interval` seconds, give up after `timeout` seconds.
    `failure_count` consecutive failures take a backend Offline, `success_count`
    consecutive successes bring it back Online."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timeout: float = Field(5.0, gt=0)
    interval: float = Field(5.0, gt=0)
    success_count: int = Field(3, gt=0)
    failure_count: int = Field(2, gt=0)


class Backend(BaseModel):
    """One `address:port` that receives traffic; the address is an IP literal."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str
    port: int = Field(gt=0, lt=65536)

    @field_validator("address")
    @classmethod
    def _ip_literal(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None

    @property
    def key(self) -> str:
        """Identity of the backend within a listener, also its metrics label."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


class Listener(BaseModel):
    """A port the load balancer accepts on, and where its connections go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    port: int = Field(gt=0, lt=65536)
    host: str = "0.0.0.0"
    backends: list[Backend] = Field(default_factory=list)
    algorithm: Algorithm = Algorithm.SOURCE_IP_HASH
    allow: list[str] = Field(
        default_factory=list, description="source CIDRs allowed in; empty allows everyone"
    )
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    hold_seconds: float = Field(
        0.0,
        ge=0,
        description="with no backend online, hold a new connection this long for one "
        "(a deployment scaling from zero) instead of closing it",
    )

    @field_validator("host")
    @classmethod
    def _host_literal(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            raise ValueError(f"{value!r} is not an IPv4 or IPv6 address") from None

    @field_validator("allow")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        return parse_cidrs(values)

    @field_validator("backends")
    @classmethod
    def _unique_backends(cls, values: list[Backend]) -> list[Backend]:
        seen: set[str] = set()
        for backend in values:
            if backend.key in seen:
                raise ValueError(f"backend {backend.key} is listed twice")
            seen.add(backend.key)
        return values

    @property
    def key(self) -> str:
        return f"{self.host}:{self.port}"


def parse_cidrs(values: list[str]) -> list[str]:
    """Source CIDRs as a listener keeps them (`10.1.2.3/8` -> `10.0.0.0/8`); recipes
    that end up as listeners (a deployment's routes) validate with it at apply."""
    out = []
    for value in values:
        try:
            out.append(str(ipaddress.ip_network(value, strict=False)))
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR such as 10.0.0.0/8") from None
    return out


class LoadBalancerConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    listeners: list[Listener] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_ports(self) -> LoadBalancerConfig:
        seen: set[int] = set()
        for listener in self.listeners:
            if listener.port in seen:
                raise ValueError(f"port {listener.port} has two listeners")
            seen.add(listener.port)
        return self


class InvalidLoadBalancerConfig(ClientError):
    def __init__(self, problems: list[FieldProblem]) -> None:
        summary = "; ".join(f"{p.path}: {p.message}" for p in problems)
        super().__init__(
            f"invalid load balancer config: {summary}", "invalid_load_balancer", 422, problems
        )


def parse_config(data: Mapping[str, Any]) -> LoadBalancerConfig:
    """Validate raw data; errors name each offending field (`listeners[0].port`)."""
    try:
        return LoadBalancerConfig.model_validate(data)
    except ValidationError as e:
        problems = [
            FieldProblem(_format_path(item["loc"]) or "(root)", _message(item))
            for item in e.errors()
        ]
        raise InvalidLoadBalancerConfig(problems) from e


def read_config(path: str | Path) -> LoadBalancerConfig:
    """Load a YAML or JSON file (YAML is a superset of JSON) and validate it."""
    text = Path(path).read_text()
    data = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise InvalidLoadBalancerConfig([FieldProblem("(root)", "must be a mapping")])
    return parse_config(data)


def _message(item: Mapping[str, Any]) -> str:
    if item["type"] == "extra_forbidden":
        return "unknown field"
    return str(item["msg"]).removeprefix("Value error, ")


def _format_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out
