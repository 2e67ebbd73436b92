"""The shared shape of every reconciler loop: run `step()` when one of the changes
it watches is announced (`server/changes.py`) or every `interval` seconds, log and
back off on errors, stop cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import ClassVar

from flotilla.server.changes import Change, Changes

log = logging.getLogger("flotilla.reconcilers")


class ReconcileLoop:
    name = "loop"
    # The changes that make this loop look now rather than at its next resync.
    watches: ClassVar[tuple[Change, ...]] = ()
    # Woken again and again (a start per request), a paced loop waits as long as
    # its last step took before the next: a step mostly of Python work then holds
    # the event loop at most half the time, requests are answered in between, and
    # the next step handles all that came meanwhile at once.
    paced: ClassVar[bool] = False

    def __init__(self, changes: Changes, interval: float, min_gap: float = 0.0) -> None:
        self.wake = asyncio.Event()
        changes.subscribe(self.wake, self.watches)
        self.interval = interval
        # Under a burst of wake-ups, steps are at least `min_gap` apart so that one
        # step handles many changes at once; an idle loop still reacts at once.
        self.min_gap = min_gap
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._stopping = False

    async def step(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"reconciler-{self.name}")

    async def stop(self, grace: float = 10.0) -> None:
        """Let the current step finish, then end the loop. Cancelling mid-step is
        the last resort: a database driver cancelled inside a query may leave its
        connection unusable."""
        if self._task is None:
            return
        self._stopping = True
        self.wake.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None

    async def drain(self) -> None:
        """Run one last step now (used at shutdown and by tests)."""
        await self.step()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last_step = -1e9
        took = 0.0  # how long the last step took (for `paced` loops)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self._delay())
            # Steps start `min_gap` apart; a paced one also idles as long as it took.
            gap = last_step + max(self.min_gap, 2 * took if self.paced else 0.0) - loop.time()
            if gap > 0 and not self._stopping:
                await asyncio.sleep(gap)
            self.wake.clear()
            if self._stopping:
                return
            last_step = loop.time()
            try:
                await self.step()
                self._failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                self._failures += 1
                log.exception("%s step failed (%d in a row)", self.name, self._failures)
            took = loop.time() - last_step

    def _delay(self) -> float:
        if not self._failures:
            return self.interval
        # Exponential back-off with jitter, so a broken database is not hammered.
        backoff: float = min(30.0, self.interval * 2 ** min(self._failures, 5))
        return backoff * random.uniform(0.5, 1.0)
