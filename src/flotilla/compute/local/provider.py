"""This machine behind the provider interface: one instance that always exists.

The server registers it as the node `local` at start-up (unless disabled), so the
embedded default runs work here with no fleet at all; a fleet with
`provider: local` simply adopts it.
"""

from __future__ import annotations

from datetime import datetime

from flotilla.compute.base import NodeInventory
from flotilla.compute.provider import (
    CapacityError,
    Instance,
    InstanceState,
    Offer,
    ProviderError,
    ProviderEvent,
)
from flotilla.core.topology import Node

LOCAL = "local"


class LocalProvider:
    name = LOCAL

    def __init__(self, inventory: NodeInventory, started_at: datetime) -> None:
        self.inventory = inventory
        self.started_at = started_at
        self.taken_by: str | None = None  # the request that holds the one instance

    def offers(self, gpu_type: str | None = None, region: str | None = None) -> list[Offer]:
        kind = self.inventory.gpu_type or "none"
        if gpu_type and kind.upper() != gpu_type.upper():
            return []
        if region and region != LOCAL:
            return []
        return [
            Offer(LOCAL, LOCAL, kind, len(self.inventory.gpus), 0.0, None, 1, True),
        ]

    def capacity(self, instance_type: str, region: str) -> int:
        return 1 if (instance_type, region) == (LOCAL, LOCAL) and self.taken_by is None else 0

    def cluster_capacity(self, instance_type: str, region: str) -> int:
        return self.capacity(instance_type, region)  # one machine: its own partition

    def create_instances(
        self,
        request_id: str,
        instance_type: str,
        region: str,
        count: int,
        spot: bool,
        cluster: bool,
        now: datetime,
    ) -> list[Instance]:
        if (instance_type, region) != (LOCAL, LOCAL) or spot:
            raise ProviderError("the local provider has one on-demand instance: local/local")
        if count != 1:
            raise ProviderError("the local provider has exactly one instance")
        if self.taken_by not in (None, request_id):
            raise CapacityError("this machine is already in a fleet", retry_after=60)
        self.taken_by = request_id
        return [self.instance()]

    def instance(self) -> Instance:
        inv = self.inventory
        node = Node(
            LOCAL, inv.gpu_type or "", len(inv.gpus), len(inv.gpus), LOCAL, LOCAL, LOCAL, LOCAL
        )
        return Instance(
            LOCAL,
            LOCAL,
            LOCAL,
            False,
            InstanceState.READY,
            self.started_at,
            self.started_at,
            node,
            0.0,
        )

    def terminate(self, instance_id: str, now: datetime) -> None:
        self.taken_by = None  # this machine stays; it only leaves the fleet

    def poll(self, now: datetime) -> list[ProviderEvent]:
        return []
