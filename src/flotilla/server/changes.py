"""What changed: the facts that routers, services and loops announce, and the loops
that act on each.

Whoever changes something says what it changed (`ctx.changes.announce(
Change.RUNS_QUEUED)`), after its commit, and never which loop should look: each
reconcile loop declares the changes it watches (`ReconcileLoop.watches`) and is
woken by any of them. A new loop subscribes to existing facts without touching
the code that announces them. An announcement is a hint to look now; the loops
also resync periodically, so a lost one only delays."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterable


class Change(enum.Enum):
    RUNS_QUEUED = "runs were queued or requeued"
    STOPS_REQUESTED = "runs or tasks were asked to stop"
    CAPACITY_FREED = "tasks ended, freeing their capacity"
    TASKS_CHANGED = "tasks started or ended"
    NODES_CHANGED = "nodes joined, left, were lost or changed state or trust"
    CAPACITY_WANTED = "runs wait for capacity an elastic fleet could add"
    QUEUE_POLICY = "the queue policy or a quota changed"
    SCHEDULES = "a job's schedule changed"
    FLEETS = "a fleet recipe changed"
    DEPLOYMENTS = "a deployment changed or has traffic waiting"
    LOAD_BALANCERS = "a load balancer or its policy changed"


class Changes:
    """The subscriptions: which events to set when a change is announced."""

    def __init__(self) -> None:
        self._watchers: dict[Change, list[asyncio.Event]] = {change: [] for change in Change}

    def subscribe(self, wake: asyncio.Event, changes: Iterable[Change]) -> None:
        for change in changes:
            if wake not in self._watchers[change]:
                self._watchers[change].append(wake)

    def unsubscribe(self, wake: asyncio.Event) -> None:
        for watchers in self._watchers.values():
            if wake in watchers:
                watchers.remove(wake)

    def announce(self, *changes: Change) -> None:
        for change in changes:
            for wake in self._watchers[change]:
                wake.set()

    def watchers(self, change: Change) -> int:
        """How many loops watch `change` (for tests and `flo server` diagnostics)."""
        return len(self._watchers[change])
