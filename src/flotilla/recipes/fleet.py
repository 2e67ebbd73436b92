"""The fleet recipe spec: a pool of GPU nodes from a provider, fixed (`nodes: 4`)
or elastic (`nodes: 0..8`), optionally one interconnected cluster; or, with
`provider: ssh`, the hosts listed in `hosts`, reached over SSH (on-prem machines).

Applied like any recipe (`type: fleet`); the fleet reconciler
(`server/reconcilers/fleets.py`) provisions and releases nodes from its provider to
keep the fleet at its desired size. `flo simulate` replays traces on one offline.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from flotilla.core.catalog import instance_type
from flotilla.core.units import parse_duration
from flotilla.recipes.job import NAME_PATTERN, Strict

_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")


class Placement(StrEnum):
    ANY = "any"
    CLUSTER = "cluster"  # all nodes in one InfiniBand partition


SSH = "ssh"
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$|^\[?[0-9A-Fa-f:]+\]?$")
_JUMP = re.compile(
    r"^(?:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}@)?[A-Za-z0-9.:\[\]-]{1,255}(?::\d{1,5})?$"
)
_NODE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class SshHost(Strict):
    """One machine of an SSH fleet: how to log in, and what it becomes as a node."""

    address: str = Field(description="host name or IP address the control plane reaches")
    port: int = Field(22, ge=1, le=65535)
    user: str = Field("root", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    key: str = Field(min_length=1, description="the Flotilla secret holding the private key")
    proxy_jump: str | None = Field(None, description="[user@]host[:port] to hop through")
    name: str | None = Field(None, description="the node's name [FLEET-ADDRESS]")
    gpus: str | None = Field(None, description="declared GPUs when NVML finds none: H100:8")
    host_key: str | None = Field(
        None,
        pattern=r"^(ssh|ecdsa)-[A-Za-z0-9-]+ [A-Za-z0-9+/=]+$",
        description="pin the host key (`ssh-ed25519 AAAA…`) [the first one seen is recorded]",
    )
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _HOST_NAME.match(value):
            raise ValueError("must be a host name or an IP address")
        return value.strip("[]")

    @field_validator("proxy_jump")
    @classmethod
    def _jump(cls, value: str | None) -> str | None:
        if value is not None and not _JUMP.match(value):
            raise ValueError("must be [user@]host[:port]")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _NODE_NAME.match(value):
            raise ValueError("must be a DNS label: lowercase letters, digits and '-'")
        return value

    def node_name(self, fleet: str) -> str:
        if self.name:
            return self.name
        tail = re.sub(r"[^a-z0-9]+", "-", self.address.lower()).strip("-")
        return f"{fleet.lower()}-{tail}"[:63].rstrip("-")


class FleetSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    owner: str | None = None
    description: str = ""
    provider: str = "sim"
    instance_type: str = Field("", description="required, except for provider: ssh")
    hosts: list[SshHost] = Field(default_factory=list, description="provider: ssh only")
    # provider: ssh: where the agent keeps its files on each host, the Python it runs
    # with, and the port it serves the control plane on.
    agent_data_dir: str = Field("/var/lib/flotilla", pattern=r"^/[A-Za-z0-9_./-]*$")
    agent_python: str = Field("python3", pattern=r"^[A-Za-z0-9_./+-]+$")
    agent_port: int = Field(7477, ge=1, le=65535)
    region: str | None = None
    nodes: int | str = Field(1, description="a count, or MIN..MAX for an elastic fleet")
    placement: Placement = Placement.ANY
    spot: bool = False
    idle_timeout: str | int = "10m"
    spares: int = Field(0, ge=0)

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, value: int | str) -> int | str:
        if isinstance(value, int):
            if value < 0:
                raise ValueError("must not be negative")
            return value
        match = _RANGE.match(value)
        if match is None:
            raise ValueError("must be a count (4) or a range MIN..MAX (0..8)")
        low, high = int(match.group(1)), int(match.group(2))
        if low > high or high == 0:
            raise ValueError("MIN..MAX needs MIN <= MAX and MAX >= 1")
        return value

    @field_validator("idle_timeout")
    @classmethod
    def _idle(cls, value: str | int) -> str | int:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _ssh_hosts(self) -> FleetSpec:
        if self.provider != SSH:
            if self.hosts:
                raise ValueError("hosts: only for provider: ssh")
            if not self.instance_type:
                raise ValueError("instance_type: required")
            return self
        if not self.hosts:
            raise ValueError("hosts: provider ssh needs at least one host")
        if self.instance_type or self.spot or self.placement != Placement.ANY:
            raise ValueError("provider ssh: instance_type, spot and placement do not apply")
        names = [h.node_name(self.name) for h in self.hosts]
        if len(set(names)) != len(names):
            raise ValueError("hosts: two hosts would have the same node name; name them")
        return self

    def is_ssh(self) -> bool:
        return self.provider == SSH

    @model_validator(mode="after")
    def _instance_type_known(self) -> FleetSpec:
        if self.provider == "sim":
            try:
                instance_type(self.instance_type)
            except KeyError as e:
                raise ValueError(str(e.args[0])) from e
        return self

    def node_range(self) -> tuple[int, int]:
        if self.is_ssh():
            return len(self.hosts), len(self.hosts)
        if isinstance(self.nodes, int):
            return self.nodes, self.nodes
        match = _RANGE.match(self.nodes)
        assert match is not None
        return int(match.group(1)), int(match.group(2))

    def idle_timeout_seconds(self) -> float:
        return parse_duration(self.idle_timeout)
