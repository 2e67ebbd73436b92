"""From a store snapshot to a placement plan (`services.placement.plan`), without a
store: nodes, runs and tasks are built in memory."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flotilla.core.queue import Policy
from flotilla.recipes.job import JobSpec
from flotilla.server.db.models import NodeModel, RecipeModel, RunModel, TaskModel
from flotilla.server.services.runs.capacity import Placed
from flotilla.server.services.runs.placement import plan
from flotilla.server.services.runs.queue_head import Waiting
from flotilla.server.services.runs.scheduling import Snapshot

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def node(
    name: str, gpus: int = 8, state: str = "ready", spot: bool = False, **labels: str
) -> NodeModel:
    return NodeModel(
        name=name,
        state=state,
        address=f"10.0.0.{len(name)}",
        gpu_type="H100",
        spot=spot,
        gpus=[{"index": i, "healthy": True} for i in range(gpus)],
        labels={
            "partition": labels.get("partition", "p0"),
            "leaf": labels.get("leaf", name),
            "spine": "s0",
            "nvlink": name,
        },
    )


def waiting(run_id: str, owner: str = "alice", **spec: Any) -> Waiting:
    full = {"name": run_id, "command": "true", **spec}
    run = RunModel(id=run_id, spec=full, queued_at=T0, reason="queued", attempt=0)
    tasks = [TaskModel(id=f"{run_id}-{r}", rank=r, gpus=[]) for r in range(full.get("scale", 1))]
    return Waiting(run, RecipeModel(owner=owner, name=run_id), JobSpec.model_validate(full), tasks)


def snapshot(
    nodes: list[NodeModel], pending: list[Waiting], held: dict[str, set[int]] | None = None
) -> Snapshot:
    snap = Snapshot({n.name: n for n in nodes}, held=held or {}, pending=pending)
    snap.busy = set((held or {}).keys())
    return snap


def test_a_gang_gets_distinct_gpus_on_nodes_of_one_partition() -> None:
    nodes = [node("a", partition="p0"), node("b", partition="p1"), node("c", partition="p0")]
    run = waiting("gang", scale=2, resources={"gpu": "H100:8"})
    result = plan(snapshot(nodes, [run]), Policy(), {})
    placed = result.placements["gang"]
    assert sorted(p.node for p in placed) == ["a", "c"]  # never split across partitions
    assert all(p.gpus == tuple(range(8)) for p in placed)


def test_small_tasks_pack_onto_the_fewest_nodes_with_their_own_gpus() -> None:
    nodes = [node("a"), node("b"), node("c")]
    run = waiting("many", scale=16, resources={"gpu": "H100:1"})
    placed = plan(snapshot(nodes, [run]), Policy(), {}).placements["many"]
    assert len({p.node for p in placed}) == 2
    per_node: dict[str, list[int]] = {}
    for p in placed:
        per_node.setdefault(p.node, []).extend(p.gpus)
    assert all(sorted(g) == list(range(8)) for g in per_node.values())


def test_held_gpus_cordoned_nodes_and_spot_capacity_are_respected() -> None:
    nodes = [node("busy"), node("off", state="cordoned"), node("cheap", spot=True)]
    one = waiting("one", resources={"gpu": "H100:4"})
    spot = waiting("spot", resources={"gpu": "H100:8"}, use_spot_instance=True)
    big = waiting("big", resources={"gpu": "H100:8"})
    result = plan(snapshot(nodes, [one, spot, big], held={"busy": {0, 1, 2, 3}}), Policy(), {})
    assert result.placements["one"][0].node == "busy"
    assert result.placements["one"][0].gpus == (4, 5, 6, 7)
    assert result.placements["spot"][0].node == "cheap"  # spot runs use spot nodes
    # On-demand work never lands on spot capacity, nor on a cordoned node.
    assert "big" not in result.placements
    assert result.reasons["big"].startswith("waiting for 8 H100 GPUs on one node")
    assert result.waiting_for_capacity


def test_cpu_only_runs_prefer_nodes_without_gpus_and_wait_when_none_is_ready() -> None:
    nodes = [node("gpu"), node("cpu", gpus=0)]
    result = plan(snapshot(nodes, [waiting("cpu-job", scale=3)]), Policy(), {})
    assert [p.node for p in result.placements["cpu-job"]] == ["cpu", "cpu", "cpu"]
    none = plan(snapshot([node("x", state="draining")], [waiting("j")]), Policy(), {})
    assert none.reasons["j"].startswith("no schedulable node")


def test_priority_preemption_is_planned() -> None:
    full = node("a")
    low_run = RunModel(id="low", spec={"priority": 0}, attempt=0)
    low = Placed(
        low_run,
        RecipeModel(owner="bob", name="low"),
        [TaskModel(id="low-0", node="a", gpus=list(range(8)), rank=0)],
    )
    urgent = waiting("urgent", resources={"gpu": "H100:8"}, priority=5)
    snap = snapshot([full], [urgent], held={"a": set(range(8))})
    snap.placed = [low]
    result = plan(snap, Policy(), {})
    assert "low" in result.preempt and "priority 5 > 0" in result.preempt["low"]
    assert "preempting 1 run" in result.reasons["urgent"]
