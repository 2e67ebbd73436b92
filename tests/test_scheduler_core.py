"""The pure scheduler: topology-aware gang placement and the queue policy
(priorities, fair share, quotas, backfill reservations, preemption)."""

from __future__ import annotations

from flotilla.compute.sim.topology import virtual_cluster
from flotilla.core.catalog import INSTANCE_TYPES, instance_type
from flotilla.core.queue import Policy, QueuedRun, RunningRun, schedule
from flotilla.core.topology import CapacityIndex, Node, TypeIndex


def tree(
    layout: dict[str, dict[str, dict[str, int]]], used: dict[str, int] | None = None
) -> list[Node]:
    """partition -> spine -> leaf -> node count; every node is an 8-GPU NVLink domain."""
    nodes = []
    for partition, spines in layout.items():
        for spine, leaves in spines.items():
            for leaf, count in leaves.items():
                for i in range(count):
                    name = f"{leaf}-n{i}"
                    free = 8 - (used or {}).get(name, 0)
                    nodes.append(Node(name, "H100", 8, free, partition, spine, leaf, name))
    return nodes


LAYOUT = {
    "p0": {"s0": {"l0": 4, "l1": 3}, "s1": {"l2": 2, "l3": 4}},
    "p1": {"s2": {"l4": 4, "l5": 4}},
}


def test_gang_goes_to_the_smallest_subtree_with_best_fit() -> None:
    index = TypeIndex(tree(LAYOUT))
    two = index.best_gang(2, 8)
    assert (
        two is not None and two.level == "leaf" and {n.split("-")[0] for n in two.nodes} == {"l2"}
    )
    three = index.best_gang(3, 8)
    assert three is not None and {n.split("-")[0] for n in three.nodes} == {"l1"}
    seven = index.best_gang(7, 8)  # one spine holds 7 exactly: s0 (l0 + l1)
    assert seven is not None and seven.level == "spine" and seven.spread == (7, 2, 1)
    nine = index.best_gang(9, 8)  # p0 has 13 nodes: two spines, the fullest leaves first
    assert nine is not None and nine.level == "partition"
    assert {index.nodes[n].partition for n in nine.nodes} == {"p0"}
    assert nine.spread[1] == 3  # 4 + 4 + 1 from three leaves, not four


def test_gang_is_all_or_nothing_and_never_splits_partitions() -> None:
    index = TypeIndex(tree(LAYOUT))
    assert index.best_gang(14, 8) is None  # 21 nodes in all, but at most 13 in one partition
    assert index.free_total == 21 * 8  # nothing was taken
    decision = schedule(
        CapacityIndex(tree(LAYOUT)), [QueuedRun("big", "a", "x", 14, 8, "H100")], ()
    )
    assert "big" not in decision.placed
    assert "IB partition with 14 nodes" in decision.reasons["big"]


def test_partial_nodes_and_single_node_best_fit() -> None:
    index = TypeIndex(tree({"p": {"s": {"l": 3}}}, used={"l-n0": 6, "l-n1": 2}))
    assert index.best_single(2) == "l-n0"  # exactly 2 free: best fit
    assert index.best_single(5) == "l-n1"
    assert index.best_gang(2, 6) is not None and index.best_gang(3, 6) is None


def test_quotas_are_hard_limits_with_reasons() -> None:
    queue = [
        QueuedRun("a1", "alice", "vision", 1, 8, "H100"),
        QueuedRun("a2", "alice", "vision", 1, 8, "H100"),
        QueuedRun("b1", "bob", "nlp", 2, 8, "H100"),
    ]
    running = [RunningRun("old", "bob", "nlp", 0, (("l0-n0", 8),))]
    policy = Policy(user_quota={"alice": 8}, project_quota={"nlp": 16})
    decision = schedule(CapacityIndex(tree(LAYOUT)), queue, running, policy=policy)
    assert "a1" in decision.placed
    assert (
        decision.reasons["a2"] == "user quota: alice holds 8 GPUs, this run needs 8, the limit is 8"
    )
    assert decision.reasons["b1"].startswith("project quota: nlp holds 8 GPUs")


def test_fair_share_between_two_users_on_a_saturated_fleet() -> None:
    # Alice queued ten runs before Bob queued his; there is room for ten.
    queue = [QueuedRun(f"a{i}", "alice", "x", 1, 8, "H100", queued_at=i) for i in range(10)]
    queue += [QueuedRun(f"b{i}", "bob", "x", 1, 8, "H100", queued_at=100 + i) for i in range(10)]
    nodes = tree({"p": {"s": {"l": 10}}})
    decision = schedule(CapacityIndex(nodes), queue, ())
    placed = sorted(decision.placed)
    assert len(placed) == 10
    assert (
        sum(r.startswith("a") for r in placed) == 5 and sum(r.startswith("b") for r in placed) == 5
    )
    # Heavy recent usage tips the balance: Bob, who used less, gets more now.
    decision = schedule(
        CapacityIndex(tree({"p": {"s": {"l": 10}}})), queue, (), usage={"alice": 8 * 3600 * 50}
    )
    assert sum(r.startswith("b") for r in decision.placed) == 10


def test_priority_preempts_lower_never_equal_and_spot_for_on_demand() -> None:
    full = tree({"p": {"s": {"l": 2}}})
    running = [
        RunningRun("low", "bob", "x", 0, (("l-n0", 8),)),
        RunningRun("peer", "carol", "x", 5, (("l-n1", 8),)),
    ]
    for node in full:
        node.free = 0
    urgent = QueuedRun("urgent", "alice", "x", 1, 8, "H100", priority=5)
    decision = schedule(CapacityIndex(full), [urgent], running)
    assert decision.preempt == {"low": "preempted for run urgent (priority 5 > 0)"}
    assert "preempting 1 run" in decision.reasons["urgent"]

    equal = [RunningRun("peer2", "bob", "x", 5, (("l-n0", 8),)), running[1]]
    decision = schedule(CapacityIndex(full), [urgent], equal)
    assert decision.preempt == {}  # equal priority is never preempted by default
    spot = [RunningRun("cheap", "bob", "x", 5, (("l-n0", 8),), spot=True), running[1]]
    decision = schedule(CapacityIndex(full), [urgent], spot)
    assert decision.preempt == {"cheap": "spot run preempted for on-demand run urgent"}


def test_backfill_never_takes_what_the_head_is_waiting_for() -> None:
    # n0 is free, n1 half used, n2 has 2 free: the 2-node head cannot start and
    # holds the two emptiest nodes (n0, n1); a small run may still use n2.
    nodes = tree({"p": {"s": {"l": 3}}}, used={"l-n1": 4, "l-n2": 6})
    head = QueuedRun("head", "alice", "x", 2, 8, "H100", priority=1)
    small = QueuedRun("small", "bob", "x", 1, 2, "H100")
    tiny = QueuedRun("tiny", "bob", "x", 1, 4, "H100")
    decision = schedule(CapacityIndex(nodes), [head, small, tiny], ())
    assert "head" not in decision.placed
    assert decision.placed.get("small") == ("l-n2",)  # backfilled outside the reservation
    assert "tiny" not in decision.placed and "behind" in decision.reasons["tiny"]


def test_catalog_prices_and_virtual_cluster() -> None:
    h100 = instance_type("h100-80gb-sxm-ib.8x")
    assert h100.price_per_hour() == 31.2 and h100.price_per_hour(spot=True) == 12.8
    assert instance_type("h200-141gb-sxm-ib.8x").on_demand_gpu_hour == 4.29
    mi300x = instance_type("mi300x-192gb-ib.8x")
    assert (mi300x.on_demand_gpu_hour, mi300x.spot_gpu_hour) == (3.45, 0.95)
    assert all(
        i.published == (i.gpu_type in ("H100", "H200", "MI300X") and i.infiniband)
        for i in INSTANCE_TYPES
    )
    nodes = virtual_cluster(h100, 100, 2)
    assert len({n.partition for n in nodes}) == 2 and len(nodes) == 100
    assert {n.labels["region"] for n in nodes} == {"us-east1"}
