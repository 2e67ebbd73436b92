"""The node shape of a run: how its `scale` tasks pack onto nodes.

A task (Saturn's pod) needs `gpus` GPUs. Tasks pack onto as few nodes as fit:
sixteen 1-GPU tasks need two 8-GPU nodes, two 8-GPU tasks two nodes, two 1-GPU
tasks one node. Spread evenly, every node of the run holds the same number of
tasks, so the topology index can place the run as a gang of equal node shares.
Used by the scheduler reconciler (placing), the fleet reconciler (how many nodes
pending work needs) and the what-if simulator. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    nodes: int  # how many nodes the run spans
    tasks_per_node: int  # the last node may hold fewer (see `assign`)
    gpus_per_task: int

    @property
    def gpus_per_node(self) -> int:
        return self.tasks_per_node * self.gpus_per_task


def shape(tasks: int, gpus_per_task: int, node_gpus: int, nodes: int | None = None) -> Shape:
    """The fewest nodes of `node_gpus` GPUs that hold `tasks` tasks (or exactly
    `nodes` nodes, to try a wider spread when the tightest one does not fit now).
    Runs without GPUs share one node."""
    if gpus_per_task <= 0:
        return Shape(1, tasks, 0)
    per_node = max(1, node_gpus // gpus_per_task)
    fewest = -(-tasks // per_node)
    count = min(tasks, max(fewest, nodes or fewest))
    return Shape(count, -(-tasks // count), gpus_per_task)


def wider_shapes(tasks: int, gpus_per_task: int, node_gpus: int, tries: int = 4) -> list[Shape]:
    """The tightest shape first, then up to `tries` wider ones (one more node each)."""
    first = shape(tasks, gpus_per_task, node_gpus)
    out = [first]
    for extra in range(1, tries + 1):
        wider = shape(tasks, gpus_per_task, node_gpus, first.nodes + extra)
        if wider.nodes == out[-1].nodes:
            break
        out.append(wider)
    return out


def assign(tasks: int, nodes: tuple[str, ...], tasks_per_node: int) -> list[str]:
    """The node of each task rank: ranks fill nodes in order."""
    return [nodes[rank // tasks_per_node] for rank in range(tasks)]
