"""The simulated GPU cloud behind the provider interface.

Regions hold InfiniBand networks with a capacity in slices (an 8-GPU instance
consumes 8), split into partitions of spines of leaf switches; 1-GPU types live
outside the fabric. Instances take `provisioning_delay` to become ready. Failures
are injected at a mean time between interruptions per node (and per GPU); spot
instances get an interruption notice `spot_notice` ahead of their end (the seed's
7 days by default). Stock-outs can be forced per type and region. Everything is
driven by the caller's clock and a seeded RNG, so runs are reproducible.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from flotilla.compute.provider import (
    CapacityError,
    EventKind,
    Instance,
    InstanceState,
    Offer,
    ProviderError,
    ProviderEvent,
)
from flotilla.compute.sim.topology import virtual_cluster
from flotilla.core.catalog import INSTANCE_TYPES, REGIONS, InstanceType, instance_type
from flotilla.core.topology import Node

SEVEN_DAYS = 7 * 24 * 3600.0


@dataclass
class IbNetwork:
    name: str
    region: str
    instance_type: str
    slices: int
    partitions: int = 2


@dataclass
class SimConfig:
    networks: list[IbNetwork] = field(default_factory=list)
    standalone: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, region) -> count
    provisioning_delay: float = 60.0
    spot_notice: float = SEVEN_DAYS
    spot_interruption_mtbi: float | None = None  # seconds; None: spot is never reclaimed
    node_mtbi: float | None = None
    gpu_mtbi: float | None = None
    stockouts: set[tuple[str, str]] = field(default_factory=set)
    seed: int = 1
    # Its nodes time their tasks instead of running them (`compute/virtual/`).
    virtual: bool = False

    @classmethod
    def default(cls, fabric_nodes: int = 32, partitions: int = 2) -> SimConfig:
        """One `fabric_nodes`-node fabric (in `partitions` InfiniBand partitions)
        per region for each 8-GPU type, 16 of each 1-GPU type."""
        networks = [
            IbNetwork(
                f"{region.name}-{kind.gpu_type.lower()}-ib",
                region.name,
                kind.name,
                fabric_nodes * kind.gpus,
                partitions,
            )
            for region in REGIONS
            for kind in INSTANCE_TYPES
            if kind.infiniband
        ]
        standalone = {
            (k.name, r.name): 16 for r in REGIONS for k in INSTANCE_TYPES if not k.infiniband
        }
        return cls(networks=networks, standalone=standalone)


@dataclass
class _Slot:
    node: Node
    network: str | None
    instance_id: str | None = None


@dataclass
class _Scheduled:
    at: datetime
    kind: EventKind
    detail: str = ""
    deadline: datetime | None = None
    gpu: int | None = None


class SimProvider:
    name = "sim"

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config or SimConfig.default()
        self.rng = random.Random(self.config.seed)
        self.slots: dict[tuple[str, str], list[_Slot]] = {}  # (type, region) -> slots
        for net in self.config.networks:
            kind = instance_type(net.instance_type)
            nodes = virtual_cluster(
                kind, net.slices // kind.gpus, net.partitions, net.region, net.name
            )
            for node in nodes:
                node.name = f"{net.name}-{node.name}"
                node.nvlink = f"{node.name}/nvl"
            self.slots.setdefault((kind.name, net.region), []).extend(
                _Slot(n, net.name) for n in nodes
            )
        for (type_name, region), count in self.config.standalone.items():
            kind = instance_type(type_name)
            for i in range(count):
                name = f"{region}-{kind.name}-{i}"
                node = Node(
                    name,
                    kind.gpu_type,
                    kind.gpus,
                    kind.gpus,
                    f"{name}/p",
                    f"{name}/s",
                    f"{name}/l",
                    f"{name}/nvl",
                    labels={"region": region},
                )
                self.slots.setdefault((kind.name, region), []).append(_Slot(node, None))
        self.instances: dict[str, Instance] = {}
        self.requests: dict[str, list[str]] = {}
        self.pending_events: dict[str, list[_Scheduled]] = {}
        self._counter = 0

    # -- offers ------------------------------------------------------------------------

    def capacity(self, instance_type_name: str, region: str) -> int:
        if (instance_type_name, region) in self.config.stockouts:
            return 0
        return sum(
            1 for s in self.slots.get((instance_type_name, region), []) if s.instance_id is None
        )

    def cluster_capacity(self, instance_type_name: str, region: str) -> int:
        if (instance_type_name, region) in self.config.stockouts:
            return 0
        free: dict[str | None, int] = {}
        for slot in self.slots.get((instance_type_name, region), []):
            if slot.instance_id is None:
                # Standalone types have no fabric: `create_instances` ignores
                # `cluster` for them, so they all count as one pool.
                key = slot.node.partition if slot.network is not None else None
                free[key] = free.get(key, 0) + 1
        return max(free.values(), default=0)

    def offers(self, gpu_type: str | None = None, region: str | None = None) -> list[Offer]:
        out = []
        for (type_name, slot_region), _ in sorted(self.slots.items()):
            kind = instance_type(type_name)
            if gpu_type and kind.gpu_type.upper() != gpu_type.upper():
                continue
            if region and slot_region != region:
                continue
            out.append(
                Offer(
                    kind.name,
                    slot_region,
                    kind.gpu_type,
                    kind.gpus,
                    kind.price_per_hour(),
                    kind.price_per_hour(True) if kind.spot_gpu_hour is not None else None,
                    self.capacity(kind.name, slot_region),
                    kind.published,
                )
            )
        return out

    # -- lifecycle -------------------------------------------------------------------

    def create_instances(
        self,
        request_id: str,
        instance_type_name: str,
        region: str,
        count: int,
        spot: bool,
        cluster: bool,
        now: datetime,
    ) -> list[Instance]:
        if request_id in self.requests:
            return [self.instances[i] for i in self.requests[request_id]]
        kind = self._kind(instance_type_name, region)
        if spot and kind.spot_gpu_hour is None:
            raise ProviderError(f"{kind.name} has no spot offer")
        if (kind.name, region) in self.config.stockouts:
            raise CapacityError(f"{kind.name} is out of stock in {region}", retry_after=300)
        slots = self._choose_slots(kind, region, count, cluster)
        created = [self._start(kind, region, slot, spot, now) for slot in slots]
        self.requests[request_id] = [i.id for i in created]
        return created

    def terminate(self, instance_id: str, now: datetime) -> None:
        instance = self.instances.get(instance_id)
        if instance is None or instance.state == InstanceState.TERMINATED:
            return
        instance.state = InstanceState.TERMINATED
        self.pending_events.pop(instance_id, None)
        for slots in self.slots.values():
            for slot in slots:
                if slot.instance_id == instance_id:
                    slot.instance_id = None

    def poll(self, now: datetime) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        for instance_id, scheduled in list(self.pending_events.items()):
            instance = self.instances[instance_id]
            due = [s for s in scheduled if s.at <= now]
            self.pending_events[instance_id] = [s for s in scheduled if s.at > now]
            for item in sorted(due, key=lambda s: s.at):
                if instance.state == InstanceState.TERMINATED:
                    break
                events.append(
                    ProviderEvent(
                        item.kind, instance_id, item.at, item.detail, item.deadline, item.gpu
                    )
                )
                if item.kind == EventKind.READY:
                    instance.state = InstanceState.READY
                elif item.kind == EventKind.FAILED:
                    instance.state = InstanceState.FAILED
                    self.pending_events[instance_id] = []
                elif item.kind == EventKind.TERMINATED:
                    self.terminate(instance_id, item.at)
        return sorted(events, key=lambda e: (e.at, e.instance_id))

    # -- injected events (what an operator of the simulation, or a test, makes happen)

    def interrupt_instance(self, instance_id: str, at: datetime) -> datetime:
        """A spot interruption notice at `at`, and the end of the instance
        `spot_notice` later, as the cloud would send them. Returns that deadline."""
        end = at + timedelta(seconds=self.config.spot_notice)
        self.instances[instance_id].interruption_deadline = end
        self.inject(
            instance_id,
            EventKind.INTERRUPTION_NOTICE,
            at,
            "spot capacity reclaimed",
            deadline=end,
        )
        self.inject(instance_id, EventKind.TERMINATED, end, "spot interruption")
        return end

    def inject(
        self,
        instance_id: str,
        kind: EventKind,
        at: datetime,
        detail: str = "",
        *,
        gpu: int | None = None,
        deadline: datetime | None = None,
    ) -> None:
        """Make something happen to an instance at `at` — a node or GPU failure, a spot
        notice — on top of its drawn fate (tests, drills). `poll` delivers it."""
        if instance_id not in self.instances:
            raise ProviderError(f"no instance {instance_id}")
        self.pending_events.setdefault(instance_id, []).append(
            _Scheduled(at, kind, detail, deadline, gpu)
        )

    # -- internals -------------------------------------------------------------------

    def _kind(self, name: str, region: str) -> InstanceType:
        try:
            kind = instance_type(name)
        except KeyError as e:
            raise ProviderError(str(e.args[0])) from e
        if not any(r.name == region for r in REGIONS):
            raise ProviderError(
                f"unknown region {region!r} (known: {', '.join(r.name for r in REGIONS)})"
            )
        return kind

    def _choose_slots(
        self, kind: InstanceType, region: str, count: int, cluster: bool
    ) -> list[_Slot]:
        free = [s for s in self.slots.get((kind.name, region), []) if s.instance_id is None]
        if not cluster or not kind.infiniband:
            if len(free) < count:
                raise CapacityError(f"only {len(free)} {kind.name} free in {region}, asked {count}")
            return free[:count]
        # Like the seed's Terraform: check slice capacity first, fail fast if no
        # single partition can hold the whole cluster.
        by_partition: dict[str, list[_Slot]] = {}
        for slot in free:
            by_partition.setdefault(slot.node.partition, []).append(slot)
        fitting = [slots for slots in by_partition.values() if len(slots) >= count]
        if not fitting:
            most = max((len(s) for s in by_partition.values()), default=0)
            raise CapacityError(
                f"no InfiniBand partition in {region} has {count * kind.gpus} free "
                f"{kind.name} slices for {count} instances (largest: {most * kind.gpus} slices)"
            )
        best = min(fitting, key=len)  # best fit keeps big partitions for big clusters
        return sorted(best, key=lambda s: (s.node.leaf, s.node.name))[:count]

    def _start(
        self, kind: InstanceType, region: str, slot: _Slot, spot: bool, now: datetime
    ) -> Instance:
        self._counter += 1
        instance_id = f"sim-{self._counter:06d}"
        slot.instance_id = instance_id
        ready_at = now + timedelta(seconds=self.config.provisioning_delay)
        node = Node(
            name=instance_id,
            gpu_type=kind.gpu_type,
            gpu_count=kind.gpus,
            free=kind.gpus,
            partition=slot.node.partition,
            spine=slot.node.spine,
            leaf=slot.node.leaf,
            nvlink=f"{instance_id}/nvl",
            spot=spot,
            labels={
                "region": region,
                "ib_network": slot.network or "",
                "instance_type": kind.name,
                **({"execution": "virtual"} if self.config.virtual else {}),
            },
        )
        instance = Instance(
            instance_id,
            kind.name,
            region,
            spot,
            InstanceState.PROVISIONING,
            now,
            ready_at,
            node,
            kind.price_per_hour(spot),
        )
        self.instances[instance_id] = instance
        self.pending_events[instance_id] = self._fate(instance, ready_at)
        return instance

    def _fate(self, instance: Instance, ready_at: datetime) -> list[_Scheduled]:
        """Everything that will happen to the instance, drawn now from the seeded RNG."""
        fate = [_Scheduled(ready_at, EventKind.READY)]
        config = self.config

        def after(mtbi: float) -> datetime:
            return ready_at + timedelta(seconds=self.rng.expovariate(1 / mtbi))

        if config.node_mtbi:
            fate.append(
                _Scheduled(after(config.node_mtbi), EventKind.FAILED, "node failure (injected)")
            )
        if config.gpu_mtbi:
            gpu = self.rng.randrange(instance.node.gpu_count)
            fate.append(
                _Scheduled(
                    after(config.gpu_mtbi), EventKind.GPU_FAILED, f"gpu {gpu} failed", gpu=gpu
                )
            )
        if instance.spot and config.spot_interruption_mtbi:
            notice = after(config.spot_interruption_mtbi)
            end = notice + timedelta(seconds=config.spot_notice)
            instance.interruption_deadline = end
            fate.append(
                _Scheduled(notice, EventKind.INTERRUPTION_NOTICE, "spot capacity reclaimed", end)
            )
            fate.append(_Scheduled(end, EventKind.TERMINATED, "spot interruption"))
        return fate
