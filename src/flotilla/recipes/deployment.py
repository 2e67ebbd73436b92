"""The deployment recipe (`type: deployment`): a long-running service of `replicas`
copies of `command`, behind a load balancer, with Saturn's fields (`command`,
`scale`, `routes` with `container_port`, `start_ssh`, `viewers`) plus a replica
range, a health check and autoscaling.

Each replica is a run. A replica listens on one port per route; it finds them in
`$PORT` (the first route) and `$FLOTILLA_PORT_<container_port>` (each route), since
replicas sharing a machine cannot share a port. A command that names neither (Saturn's
`python3 -m http.server 8000`, listening on its route's `container_port`) gets the
container port it names (`literal_container_ports`): it is reachable, but only one
replica fits on a machine. Pure: no I/O.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator, model_validator

from flotilla.core.units import parse_duration
from flotilla.lb.config import Algorithm, HealthCheck, parse_cidrs
from flotilla.recipes.job import JobSpec, Strict, Workload

_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")
_PORT_VARIABLE = re.compile(r"\$\{?(PORT|FLOTILLA_PORT_\d+)\b")
MAX_REPLICAS = 1000
MAX_WAIT_FOR_REPLICA = 3600.0


class Visibility(StrEnum):
    OWNER = "owner"  # the owner, their groups, the project's members, viewers
    ORG = "org"  # anyone signed in to this Flotilla
    PUBLIC = "public"  # anyone who can reach it: no authentication

    @classmethod
    def _missing_(cls, value: object) -> Visibility | None:
        return cls.PUBLIC if value == "unauthenticated" else None  # Saturn's word


class Route(Strict):
    container_port: int = Field(8000, gt=0, lt=65536, description="the port the command serves")
    visibility: Visibility = Visibility.OWNER
    protocol: str = Field("http", pattern="^(http|tcp)$")
    port: int | None = Field(
        None, gt=0, lt=65536, description="the load balancer's TCP port (default: any free one)"
    )
    allow: list[str] = Field(default_factory=list, description="source CIDRs for the TCP port")
    subdomain: str | None = None

    @field_validator("allow")
    @classmethod
    def _cidrs(cls, values: list[str]) -> list[str]:
        # Checked here, as the load balancer's listener will check it: a value the
        # reconciler cannot use must be refused at apply, not found at every step.
        return parse_cidrs(values)


class Viewer(Strict):
    """Saturn's viewer grant: a user or group who may use a route (all by default)."""

    user: str | None = None
    group: str | None = None
    route: dict[str, int] | None = None

    @model_validator(mode="after")
    def _one_principal(self) -> Viewer:
        if (self.user is None) == (self.group is None):
            raise ValueError("give exactly one of user or group")
        return self


class Autoscale(Strict):
    target_connections: float | None = Field(
        None, gt=0, description="concurrent connections per replica to aim for"
    )
    target_rps: float | None = Field(None, gt=0, description="requests per second per replica")
    scale_up_delay: str | int = Field("30s", description="load above target this long: grow")
    scale_down_delay: str | int = Field("5m", description="load below target this long: shrink")

    @field_validator("scale_up_delay", "scale_down_delay")
    @classmethod
    def _duration(cls, value: str | int) -> str | int:
        parse_duration(value)
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Autoscale:
        if self.target_connections is None and self.target_rps is None:
            raise ValueError("give target_connections or target_rps")
        return self

    def delays(self) -> tuple[float, float]:
        return parse_duration(self.scale_up_delay), parse_duration(self.scale_down_delay)


class DeploymentSpec(Workload):
    """Saturn's deployment fields (`scale`, `routes`, `viewers`, `start_ssh`) on top
    of the common workload ones, plus replicas, health check and autoscaling."""

    scale: int = Field(1, ge=0, le=MAX_REPLICAS, description="replicas, when `replicas` is unset")
    replicas: str | int | None = Field(None, description="a count, or MIN..MAX to autoscale")
    routes: list[Route] = Field(default_factory=lambda: [Route()])
    viewers: list[Viewer] = Field(default_factory=list)
    health_check: HealthCheck = Field(default_factory=HealthCheck)
    algorithm: Algorithm = Algorithm.SOURCE_IP_HASH
    autoscale: Autoscale | None = None
    wait_for_replica: str | int = Field(
        "2m",
        description="how long a request or connection waits for a ready replica (scaling "
        "from zero, every replica restarting) before it is refused; raise it for servers "
        "that load large models",
    )

    @field_validator("wait_for_replica")
    @classmethod
    def _wait(cls, value: str | int) -> str | int:
        if not 0 <= parse_duration(value) <= MAX_WAIT_FOR_REPLICA:
            raise ValueError("must be between 0 and 1h")
        return value

    def replica_wait_seconds(self) -> float:
        return parse_duration(self.wait_for_replica)

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            low, high = _bounds(value)
            if not 0 <= low <= high <= MAX_REPLICAS:
                raise ValueError(
                    f"must be a count or MIN..MAX with 0 <= MIN <= MAX <= {MAX_REPLICAS}"
                )
        return value

    @field_validator("routes")
    @classmethod
    def _routes(cls, routes: list[Route]) -> list[Route]:
        if not routes:
            raise ValueError("a deployment needs at least one route")
        for field in ("container_port", "port"):
            values = [getattr(r, field) for r in routes if getattr(r, field) is not None]
            if len(values) != len(set(values)):
                raise ValueError(f"two routes share a {field}")
        return routes

    @model_validator(mode="after")
    def _autoscale_needs_a_range(self) -> DeploymentSpec:
        low, high = self.replica_range()
        if self.autoscale is None and low != high:
            raise ValueError("replicas MIN..MAX needs `autoscale` with a target")
        return self

    def replica_range(self) -> tuple[int, int]:
        return _bounds(self.replicas) if self.replicas is not None else (self.scale, self.scale)

    def uses_port_variables(self) -> bool:
        """Whether the command (or start script) reads `$PORT`/`$FLOTILLA_PORT_<n>`."""
        text = "\n".join([*self._command_texts(), self.start_script or ""])
        return _PORT_VARIABLE.search(text) is not None

    def literal_container_ports(self) -> set[int]:
        """The routes' container ports the command names itself (`http.server 8000`,
        `--port=8000`, `0.0.0.0:8000`) while using no port variable: its replicas
        listen there, not on a port chosen for them."""
        if self.uses_port_variables():
            return set()
        tokens: set[str] = set()
        for text in self._command_texts():
            words = text.split()
            tokens.update(re.split(r"[=:]", word)[-1].strip("'\"") for word in words)
        return {r.container_port for r in self.routes if str(r.container_port) in tokens}

    def _command_texts(self) -> list[str]:
        return self.command if isinstance(self.command, list) else [self.command]

    def replica_job(self, ports: dict[int, int]) -> dict[str, Any]:
        """The spec one replica runs with: a single-task job serving on `ports`
        (container port -> host port), restarted by the deployment, not by retries."""
        env = dict(self.environment_variables)
        first = self.routes[0].container_port
        env["PORT"] = str(ports[first])
        for container_port, host_port in ports.items():
            env[f"FLOTILLA_PORT_{container_port}"] = str(host_port)
        shared = self.model_dump(include=set(Workload.model_fields), exclude_none=True)
        job = JobSpec.model_validate({**shared, "environment_variables": env})
        return job.model_dump(mode="json", exclude_none=True)


def _bounds(value: str | int) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if value.strip().isdigit():
        return int(value), int(value)
    match = _RANGE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a count or MIN..MAX")
    return int(match.group(1)), int(match.group(2))
