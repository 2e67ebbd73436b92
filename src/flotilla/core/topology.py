"""Nodes in a topology tree, and an index of their free GPUs that answers "where
does this gang fit best?" without scanning every node.

Tree, leaf to root: node → NVLink domain → leaf switch → spine → InfiniBand
partition. A multi-node run never leaves one partition (its InfiniBand fabric);
inside it, the index prefers the smallest subtree that holds the whole gang
(one NVLink domain, else one leaf, else one spine, else the partition) and, at
that level, the group with the least room to spare (best fit), so big holes stay
open for big runs.

Pure and in-memory: the scheduler reconciler builds one per cycle from the store
(or the simulator keeps one alive), asks it, and applies the answers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

LEVELS = ("nvlink", "leaf", "spine", "partition")


@dataclass
class Node:
    name: str
    gpu_type: str
    gpu_count: int
    free: int
    partition: str  # globally unique, e.g. "us-east/ib-1/p0"
    spine: str
    leaf: str
    nvlink: str
    schedulable: bool = True
    spot: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    def group(self, level: str) -> str:
        name: str = getattr(self, level)
        return name


@dataclass(frozen=True)
class GangFit:
    nodes: tuple[str, ...]
    level: str  # the smallest level whose one group holds the gang
    spread: tuple[int, int, int]  # NVLink domains, leaves, spines used


class TypeIndex:
    """Free-capacity index for the nodes of one GPU type."""

    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.max_gpus = max((n.gpu_count for n in nodes), default=0)
        # by_free[f]: schedulable nodes with exactly f free GPUs (dict as ordered set)
        self.by_free: list[dict[str, None]] = [{} for _ in range(self.max_gpus + 1)]
        # counts[level][group][g]: schedulable nodes in the group with >= g free GPUs
        self.counts: dict[str, dict[str, list[int]]] = {level: {} for level in LEVELS}
        self.members: dict[str, dict[str, list[str]]] = {level: {} for level in LEVELS}
        self.parent: dict[str, dict[str, str]] = {"nvlink": {}, "leaf": {}, "spine": {}}
        self.max_domain_nodes = 1
        for node in nodes:
            for level in LEVELS:
                group = node.group(level)
                self.counts[level].setdefault(group, [0] * (self.max_gpus + 1))
                self.members[level].setdefault(group, []).append(node.name)
            self.parent["nvlink"][node.nvlink] = node.leaf
            self.parent["leaf"][node.leaf] = node.spine
            self.parent["spine"][node.spine] = node.partition
            if node.schedulable:
                self._add(node, node.free, +1)
        self.max_domain_nodes = max((len(m) for m in self.members["nvlink"].values()), default=1)
        self.free_total = sum(n.free for n in nodes if n.schedulable)

    # -- bookkeeping ---------------------------------------------------------------

    def _add(self, node: Node, free: int, sign: int) -> None:
        if sign > 0:
            self.by_free[free][node.name] = None
        else:
            self.by_free[free].pop(node.name, None)
        for level in LEVELS:
            counts = self.counts[level][node.group(level)]
            for g in range(1, free + 1):
                counts[g] += sign

    def set_free(self, name: str, free: int) -> None:
        node = self.nodes[name]
        if node.schedulable:
            self._add(node, node.free, -1)
            self.free_total += free - node.free
        node.free = free
        if node.schedulable:
            self._add(node, free, +1)

    def take(self, name: str, gpus: int) -> None:
        node = self.nodes[name]
        assert node.free >= gpus, f"{name} has {node.free} free, asked {gpus}"
        self.set_free(name, node.free - gpus)

    def release(self, name: str, gpus: int) -> None:
        node = self.nodes[name]
        self.set_free(name, min(node.gpu_count, node.free + gpus))

    def set_schedulable(self, name: str, schedulable: bool) -> None:
        node = self.nodes[name]
        if node.schedulable == schedulable:
            return
        if node.schedulable:
            self._add(node, node.free, -1)
            self.free_total -= node.free
        node.schedulable = schedulable
        if schedulable:
            self._add(node, node.free, +1)
            self.free_total += node.free

    # -- questions -----------------------------------------------------------------

    def best_single(self, gpus: int) -> str | None:
        """The schedulable node with the fewest free GPUs that still fits (best fit)."""
        for free in range(gpus, self.max_gpus + 1):
            bucket = self.by_free[free]
            if bucket:
                return next(iter(bucket))
        return None

    def best_gang(self, nodes: int, gpus: int) -> GangFit | None:
        """`nodes` nodes with `gpus` free each, inside one partition, in the smallest
        subtree that holds them all; None if no partition can."""
        if gpus > self.max_gpus or gpus < 1:
            return None
        for level in LEVELS:
            if level == "nvlink" and nodes > self.max_domain_nodes:
                continue
            group = self._best_group(level, nodes, gpus)
            if group is not None:
                chosen = self._pick(level, group, nodes, gpus)
                return GangFit(tuple(chosen), level, self.spread(chosen))
        return None

    def _best_group(self, level: str, nodes: int, gpus: int) -> str | None:
        best, best_surplus = None, None
        for group, counts in self.counts[level].items():
            have = counts[gpus]
            if have >= nodes and (best_surplus is None or have - nodes < best_surplus):
                best, best_surplus = group, have - nodes
                if best_surplus == 0:
                    break
        return best

    def _pick(self, level: str, group: str, nodes: int, gpus: int) -> list[str]:
        """Choose the nodes inside `group`, filling the fullest sub-groups first so
        the gang spans as few of them as possible."""
        if level in ("nvlink", "leaf"):
            candidates = [n for n in self.members[level][group] if self._fits(n, gpus)]
            return self._fill_by(candidates, "nvlink", nodes, gpus)
        child = {"spine": "leaf", "partition": "spine"}[level]
        subgroups = [g for g, parent in self.parent[child].items() if parent == group]
        subgroups.sort(key=lambda g: -self.counts[child][g][gpus])
        chosen: list[str] = []
        for sub in subgroups:
            if len(chosen) == nodes:
                break
            need = nodes - len(chosen)
            have = self.counts[child][sub][gpus]
            if have:
                chosen += self._pick(child, sub, min(need, have), gpus)
        return chosen

    def _fill_by(self, candidates: list[str], level: str, nodes: int, gpus: int) -> list[str]:
        """Take nodes from the largest `level` groups first: the fewest groups."""
        by_group: dict[str, list[str]] = {}
        for name in candidates:
            by_group.setdefault(self.nodes[name].group(level), []).append(name)
        chosen: list[str] = []
        for members in sorted(by_group.values(), key=lambda m: -len(m)):
            members.sort(key=lambda n: self.nodes[n].free)  # best fit inside the group
            chosen += members[: nodes - len(chosen)]
            if len(chosen) == nodes:
                break
        return chosen

    def _fits(self, name: str, gpus: int) -> bool:
        node = self.nodes[name]
        return node.schedulable and node.free >= gpus

    def spread(self, names: Iterable[str]) -> tuple[int, int, int]:
        chosen = [self.nodes[n] for n in names]
        return (
            len({n.nvlink for n in chosen}),
            len({n.leaf for n in chosen}),
            len({n.spine for n in chosen}),
        )

    def smallest_level_possible(self, nodes: int, gpus: int) -> str | None:
        """The level a perfect placer would use now (for measuring quality)."""
        fit = self.best_gang(nodes, gpus)
        return fit.level if fit else None


class CapacityIndex:
    """One `TypeIndex` per GPU type."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        grouped: dict[str, list[Node]] = {}
        for node in nodes:
            grouped.setdefault(node.gpu_type.upper(), []).append(node)
        self.types = {t: TypeIndex(ns) for t, ns in grouped.items()}

    def index(self, gpu_type: str) -> TypeIndex | None:
        return self.types.get(gpu_type.upper())
