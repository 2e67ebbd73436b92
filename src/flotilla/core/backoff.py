"""How long to wait before trying again after failures in a row: a first wait,
doubling, up to a cap. Pure; used by every retry (runs, fleet requests, SSH
enrollments)."""

from __future__ import annotations


def doubling(first: float, failures: int, cap: float) -> float:
    """The wait after `failures` (1, 2, …) failures in a row: `first`, doubling, at
    most `cap`."""
    return float(min(cap, first * 2 ** max(0, failures - 1)))
