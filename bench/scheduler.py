"""Scheduler benchmark: 10,000 virtual 8-GPU nodes (80,000 GPUs) in 10 InfiniBand
partitions, 100,000 queued runs of mixed shapes (1 GPU to 32 nodes), replayed in
simulated time through the same pure scheduler the server uses
(`core.queue.schedule` over `core.topology`).

Figures: gang decisions per second of scheduler CPU time, placements per second,
share of multi-node runs inside one partition (must be 100%), share placed within
the smallest subtree that could hold them at placement time, and peak memory.
The peer figure is kube-scheduler's published floor of 680 pods/s at 5,000 nodes.

    python -m bench.scheduler [--nodes 10000] [--runs 100000] [--seed 1]

Ends with one JSON line holding every figure.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import resource
import sys
import time
from dataclasses import dataclass

from flotilla.compute.sim.topology import virtual_cluster
from flotilla.core.catalog import instance_type
from flotilla.core.queue import Policy, QueuedRun, schedule
from flotilla.core.topology import LEVELS, CapacityIndex, TypeIndex

KUBE_SCHEDULER_PODS_PER_S = 680  # published floor at 5,000 nodes
SHAPES = (  # (weight, nodes, GPUs per node)
    (20, 1, 1),
    (10, 1, 2),
    (10, 1, 4),
    (15, 1, 8),
    (15, 2, 8),
    (10, 4, 8),
    (8, 8, 8),
    (6, 16, 8),
    (6, 32, 8),
)


def make_queue(
    count: int, rng: random.Random, users: int = 50
) -> tuple[list[QueuedRun], dict[str, float]]:
    weights = [w for w, _, _ in SHAPES]
    queue, durations = [], {}
    for i in range(count):
        _, nodes, gpus = rng.choices(SHAPES, weights)[0]
        run = QueuedRun(
            id=f"r{i:06d}",
            user=f"u{rng.randrange(users):02d}",
            project=f"p{rng.randrange(5)}",
            nodes=nodes,
            gpus_per_node=gpus,
            gpu_type="H100",
            priority=rng.choice((0, 0, 0, 1)),
            queued_at=float(i),
        )
        queue.append(run)
        durations[run.id] = rng.uniform(300, 4 * 3600)
    return queue, durations


@dataclass
class Quality:
    multi_node: int = 0
    one_partition: int = 0
    smallest_subtree: int = 0
    seconds: float = 0.0  # spent judging, subtracted from the scheduler's time

    def judge(self, run: QueuedRun, index: TypeIndex, nodes: tuple[str, ...]) -> None:
        if run.nodes < 2:
            return
        started = time.perf_counter()
        self.multi_node += 1
        chosen = [index.nodes[n] for n in nodes]
        if len({n.partition for n in chosen}) == 1:
            self.one_partition += 1
        used = next(lvl for lvl in LEVELS if len({n.group(lvl) for n in chosen}) == 1)
        possible = next(
            lvl
            for lvl in LEVELS
            if not (lvl == "nvlink" and run.nodes > index.max_domain_nodes)
            and any(c[run.gpus_per_node] >= run.nodes for c in index.counts[lvl].values())
        )
        if LEVELS.index(used) <= LEVELS.index(possible):
            self.smallest_subtree += 1
        self.seconds += time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--step", type=float, default=600.0, help="simulated seconds between cycles"
    )
    parser.add_argument("--depth", type=int, default=1000, help="misses in a row that end a cycle")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    nodes = virtual_cluster(instance_type("h100-80gb-sxm-ib.8x"), args.nodes, args.partitions)
    index = CapacityIndex(nodes)
    queue, durations = make_queue(args.runs, rng)
    per_partition = -(-args.nodes // args.partitions)
    queue = [r for r in queue if r.nodes <= per_partition]  # shapes no partition can hold
    quality = Quality()
    ends: list[tuple[float, str, tuple[str, ...], int]] = []
    usage: dict[str, float] = {}
    by_id = {r.id: r for r in queue}
    pending = list(queue)
    now, cycles, decisions, placements, scheduler_seconds = 0.0, 0, 0, 0, 0.0
    type_index = index.index("H100")
    assert type_index is not None
    while pending:
        started = time.perf_counter()
        decision = schedule(
            index, pending, (), usage, Policy(), max_misses=args.depth, on_place=quality.judge
        )
        scheduler_seconds += time.perf_counter() - started
        cycles += 1
        decisions += len(decision.placed) + len(decision.reasons)
        placements += len(decision.placed)
        for run_id, placed in decision.placed.items():
            run = by_id[run_id]
            heapq.heappush(ends, (now + durations[run_id], run_id, placed, run.gpus_per_node))
            usage[run.user] = usage.get(run.user, 0.0) + run.gpus * durations[run_id]
        if decision.placed:
            pending = [r for r in pending if r.id not in decision.placed]
        elif not ends:  # nothing runs and nothing starts: the rest can never fit
            break
        now += args.step
        if ends and ends[0][0] > now:
            now = ends[0][0]
        while ends and ends[0][0] <= now:
            _, _, placed, gpus = heapq.heappop(ends)
            for name in placed:
                type_index.release(name, gpus)
    scheduler_seconds -= quality.seconds
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "nodes": args.nodes,
        "gpus": args.nodes * 8,
        "partitions": args.partitions,
        "runs": args.runs,
        "runs_that_fit": len(queue),
        "cycles": cycles,
        "queue_depth_misses": args.depth,
        "decisions": decisions,
        "placements": placements,
        "scheduler_seconds": round(scheduler_seconds, 3),
        # A gang decision that matters: a run placed whole. Waiting verdicts are
        # counted apart (most are cheap "behind the head" verdicts).
        "gang_placements_per_s": round(placements / scheduler_seconds, 1),
        "all_verdicts_per_s": round(decisions / scheduler_seconds, 1),
        "multi_node_runs": quality.multi_node,
        "multi_node_in_one_partition_pct": round(
            100 * quality.one_partition / max(quality.multi_node, 1), 3
        ),
        "multi_node_in_smallest_subtree_pct": round(
            100 * quality.smallest_subtree / max(quality.multi_node, 1), 3
        ),
        "simulated_makespan_h": round(now / 3600, 2),
        "peak_memory_mb": round(peak_mb, 1),
        "kube_scheduler_pods_per_s": KUBE_SCHEDULER_PODS_PER_S,
        "placements_per_s_over_kube_scheduler": round(
            placements / scheduler_seconds / KUBE_SCHEDULER_PODS_PER_S, 2
        ),
        "targets_met": {
            "gang_placements_per_s_at_least_2000": placements / scheduler_seconds >= 2000,
            "memory_at_most_300_mb": peak_mb <= 300,
            "all_multi_node_in_one_partition": quality.one_partition == quality.multi_node,
        },
    }
    print(
        f"{placements} placements in {cycles} cycles, {scheduler_seconds:.1f} s of scheduling: "
        f"{result['gang_placements_per_s']} gang placements/s; "
        f"peak {peak_mb:.0f} MB",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
