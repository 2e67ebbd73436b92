"""Packing a run's tasks onto as few nodes as fit (massively parallel runs)."""

from __future__ import annotations

from flotilla.core.packing import Shape, assign, shape, wider_shapes


def test_tasks_pack_onto_the_fewest_nodes() -> None:
    assert shape(16, 1, 8) == Shape(2, 8, 1)  # sixteen 1-GPU tasks: two 8-GPU nodes
    assert shape(2, 8, 8) == Shape(2, 1, 8)  # a classic 2-node gang
    assert shape(2, 1, 8) == Shape(1, 2, 1)  # two small tasks share a node
    assert shape(4, 2, 8) == Shape(1, 4, 2)
    assert shape(3, 0, 8) == Shape(1, 3, 0)  # no GPUs: one node
    # Ten tasks need two nodes; spread evenly, five each, not eight and two.
    assert shape(10, 1, 8) == Shape(2, 5, 1)
    assert shape(10, 1, 8).gpus_per_node == 5


def test_wider_shapes_add_one_node_at_a_time() -> None:
    nodes = [s.nodes for s in wider_shapes(16, 1, 8)]
    assert nodes == [2, 3, 4, 5, 6]
    assert [s.nodes for s in wider_shapes(2, 8, 8)] == [2]  # cannot spread further
    for candidate in wider_shapes(16, 1, 8):
        assert candidate.nodes * candidate.tasks_per_node >= 16


def test_assign_fills_nodes_in_rank_order() -> None:
    assert assign(5, ("a", "b"), 3) == ["a", "a", "a", "b", "b"]
    assert assign(2, ("a",), 2) == ["a", "a"]
