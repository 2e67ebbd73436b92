"""Generating the InfiniBand topology of simulated clusters: partitions of spines of
leaf switches of nodes, every node labelled with region, IB network, partition,
NVLink domain, leaf and spine. Used by the sim provider and by benchmarks."""

from __future__ import annotations

from flotilla.core.catalog import InstanceType
from flotilla.core.topology import Node

NODES_PER_LEAF = 16  # 128 GPUs per leaf switch with 8-GPU nodes
LEAVES_PER_SPINE = 8


def virtual_cluster(
    instance: InstanceType,
    nodes: int,
    partitions: int,
    region: str = "us-east1",
    network: str = "ib-1",
    spot: bool = False,
) -> list[Node]:
    """`nodes` nodes spread evenly over `partitions` IB partitions. Each 8-GPU node
    is its own NVLink domain (HGX); leaves and spines fill in order."""
    out: list[Node] = []
    per_partition = -(-nodes // partitions)
    for i in range(nodes):
        p, k = divmod(i, per_partition)
        leaf, _ = divmod(k, NODES_PER_LEAF)
        spine = leaf // LEAVES_PER_SPINE
        partition = f"{region}/{network}/p{p}"
        name = f"{instance.gpu_type.lower()}-{i:05d}"
        out.append(
            Node(
                name=name,
                gpu_type=instance.gpu_type,
                gpu_count=instance.gpus,
                free=instance.gpus,
                partition=partition,
                spine=f"{partition}/s{spine}",
                leaf=f"{partition}/s{spine}/l{leaf}",
                nvlink=f"{name}/nvl",
                spot=spot,
                labels={"region": region, "ib_network": network, "instance_type": instance.name},
            )
        )
    return out
