"""The fleet recipe spec: a pool of GPU nodes from a provider, fixed (`nodes: 4`)
or elastic (`nodes: 0..8`), optionally one interconnected cluster.

Applied like any recipe (`type: fleet`); the fleet reconciler
(`server/reconcilers/fleets.py`) provisions and releases nodes from its provider to
keep the fleet at its desired size. `flo simulate` replays traces on one offline.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import Field, field_validator, model_validator

from flotilla.compute.sim.catalog import instance_type
from flotilla.core.units import parse_duration
from flotilla.recipes.job import NAME_PATTERN, Strict

_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")


class Placement(StrEnum):
    ANY = "any"
    CLUSTER = "cluster"  # all nodes in one InfiniBand partition


class FleetSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    owner: str | None = None
    description: str = ""
    provider: str = "sim"
    instance_type: str
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
    def _instance_type_known(self) -> FleetSpec:
        if self.provider == "sim":
            try:
                instance_type(self.instance_type)
            except KeyError as e:
                raise ValueError(str(e.args[0])) from e
        return self

    def node_range(self) -> tuple[int, int]:
        if isinstance(self.nodes, int):
            return self.nodes, self.nodes
        match = _RANGE.match(self.nodes)
        assert match is not None
        return int(match.group(1)), int(match.group(2))

    def idle_timeout_seconds(self) -> float:
        return parse_duration(self.idle_timeout)
