"""The load balancer recipe (`type: load_balancer`): TCP listeners, each routing to
backends given as `address:port`, with the managed-load-balancer contract's health
check (timeout 5 s, interval 5 s, success count 3, failure count 2), source-IP
hashing by default, and an allow-list of source CIDRs per listener.

The spec converts to `flotilla.lb.LoadBalancerConfig`, which the server's data
plane (and `flo lb serve`) runs. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator

from flotilla.lb.config import Backend, Listener, LoadBalancerConfig
from flotilla.recipes.job import NAME_PATTERN, Strict

# `/api/load_balancers/policy` is the network policy, not a load balancer's page.
RESERVED_NAMES = frozenset({"policy"})


def parse_backend(text: str) -> Backend:
    """`10.0.0.5:8000` or `[fd00::5]:8000`."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r} is not address:port")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IPv4 or IPv6 address") from None
    if not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return Backend(address=address, port=int(port))


def _backends_from_text(values: object) -> object:
    """Backends may be written `address:port` (the usual way) or as mappings."""
    if isinstance(values, list):
        return [parse_backend(v) if isinstance(v, str) else v for v in values]
    return values


class ListenerSpec(Listener):
    """A listener as a recipe states it: the data plane's `Listener`, with backends
    written `address:port` and the listen address defaulting to the server's."""

    host: str | None = Field(None, description="address to listen on (default: the server's)")  # type: ignore[assignment]
    backends: Annotated[list[Backend], BeforeValidator(_backends_from_text)] = Field(
        default_factory=list, description="address:port of each backend"
    )

    @field_validator("host")
    @classmethod
    def _host_literal(cls, value: str | None) -> str | None:  # type: ignore[override]
        # Replaces the data plane's check: no host (stored as null) means the
        # server's address, and the stored recipe must validate again as it was.
        return None if value is None else Listener._host_literal(value)

    def to_listener(self, default_host: str) -> Listener:
        return Listener(**{**self.model_dump(), "host": self.host or default_host})


class LoadBalancerSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="lower-case letters, digits and '-'")
    owner: str | None = None
    project: str = Field("default", pattern=NAME_PATTERN)
    description: str = Field("", max_length=2048)
    listeners: list[ListenerSpec] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(f"{value!r} is reserved (GET /api/load_balancers/{value})")
        return value

    @field_validator("listeners")
    @classmethod
    def _distinct_ports(cls, values: list[ListenerSpec]) -> list[ListenerSpec]:
        ports = [listener.port for listener in values]
        if len(set(ports)) != len(ports):
            raise ValueError("two listeners on one port")
        return values

    def to_config(self, default_host: str) -> LoadBalancerConfig:
        return LoadBalancerConfig(
            name=self.name, listeners=[ls.to_listener(default_host) for ls in self.listeners]
        )
