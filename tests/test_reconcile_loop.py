"""The reconcile loops' pacing: woken without pause, a paced loop (the scheduler)
leaves as much time between steps as its last step took, so a long step cannot
hold the server's event loop from the requests; an unpaced one only keeps its
`min_gap`. The steps here take their time in `asyncio.sleep`, measured on the
event loop's own clock."""

from __future__ import annotations

import asyncio
import itertools

from flotilla.server.changes import Change, Changes
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.reconcilers.scheduler import Scheduler

STEP = 0.05


class Busy(ReconcileLoop):
    watches = (Change.RUNS_QUEUED,)

    def __init__(self, changes: Changes, paced: bool) -> None:
        super().__init__(changes, interval=60.0)
        self.paced = paced  # type: ignore[misc]  # per test, not per class
        self.spans: list[tuple[float, float]] = []

    async def step(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.sleep(STEP)
        self.spans.append((started, loop.time()))


async def _gaps(paced: bool) -> list[float]:
    changes = Changes()
    busy = Busy(changes, paced)
    busy.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.6
    while loop.time() < deadline:  # a start per request, without pause
        changes.announce(Change.RUNS_QUEUED)
        await asyncio.sleep(0.005)
    await busy.stop()
    spans = busy.spans
    return [nxt[0] - cur[1] for cur, nxt in itertools.pairwise(spans)]


async def test_a_paced_loop_leaves_as_long_as_its_step_took() -> None:
    gaps = await _gaps(paced=True)
    assert len(gaps) >= 3
    assert min(gaps) >= STEP * 0.9, gaps


async def test_an_unpaced_loop_steps_again_at_once() -> None:
    gaps = await _gaps(paced=False)
    assert len(gaps) >= 5
    assert min(gaps) < STEP / 2, gaps


def test_the_scheduler_is_paced() -> None:
    assert Scheduler.paced
