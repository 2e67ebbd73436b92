"""TCP health checking of one backend: a pure consecutive-count state machine
(`Health`) and the task that feeds it probes (`HealthChecker`).

A backend is presumed Online when it is added, so a freshly applied config serves at
once (HAProxy does the same); the first probe runs immediately. Exactly
`failure_count` consecutive failed probes take it Offline and exactly `success_count`
consecutive successful ones bring it back. Every probe is kept in a bounded history
with the state it left the backend in, so tests and operators can count them.

Called by `balancer.py`, which owns one checker per (listener, backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from flotilla.lb.config import HealthCheck

HISTORY = 64  # probes kept per backend


class HealthState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class Probe:
    at: float  # wall-clock seconds
    ok: bool
    state: HealthState  # the backend's state after this probe
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Transition:
    at: float
    old: HealthState
    new: HealthState


class Health:
    """Counts consecutive probe results and switches state. No I/O."""

    def __init__(
        self, check: HealthCheck, *, clock: Callable[[], float] = time.time, history: int = HISTORY
    ) -> None:
        self.check = check
        self.state = HealthState.ONLINE
        self.successes = 0  # consecutive
        self.failures = 0  # consecutive
        self.probes = 0
        self.probes_failed = 0
        self.history: deque[Probe] = deque(maxlen=history)
        self.transitions: deque[Transition] = deque(maxlen=history)
        self._clock = clock

    def record(self, ok: bool, error: str | None = None) -> bool:
        """Account one probe; True when it changed the state."""
        self.probes += 1
        if ok:
            self.successes += 1
            self.failures = 0
            target = HealthState.ONLINE if self.successes >= self.check.success_count else None
        else:
            self.probes_failed += 1
            self.failures += 1
            self.successes = 0
            target = HealthState.OFFLINE if self.failures >= self.check.failure_count else None
        changed = target is not None and target != self.state
        now = self._clock()
        if changed and target is not None:
            self.transitions.append(Transition(now, self.state, target))
            self.state = target
        self.history.append(Probe(now, ok, self.state, error))
        return changed


Prober = Callable[[str, int, float], Awaitable[str | None]]
"""`(address, port, timeout) -> None` when healthy, else a short reason."""

Sleep = Callable[[float], Awaitable[None]]


class _Probe(asyncio.Protocol):
    pass


async def tcp_probe(address: str, port: int, within: float) -> str | None:
    """Healthy when a TCP connection is accepted within `within` seconds."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(within):
            transport, _ = await loop.create_connection(_Probe, address, port)
    except TimeoutError:
        return f"no answer within {within:g}s"
    except OSError as e:
        return e.strerror or type(e).__name__
    transport.close()
    return None


class HealthChecker:
    """Probes one backend every `health.check.interval` seconds in its own task.

    `update()` swaps the HealthCheck; a changed interval restarts the loop (the next
    probe runs at once) so a long old interval does not delay the new one.
    `on_change` is called after each state change, from the loop's thread.
    """

    def __init__(
        self,
        address: str,
        port: int,
        health: Health,
        *,
        on_change: Callable[[], None] | None = None,
        prober: Prober = tcp_probe,
        sleep: Sleep = asyncio.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.port = port
        self.health = health
        self._on_change = on_change
        self._prober = prober
        self._sleep = sleep
        self._monotonic = monotonic
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if not self.running:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"lb-health {self.address}:{self.port}"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def update(self, check: HealthCheck) -> None:
        old, self.health.check = self.health.check, check
        if old.interval != check.interval and self.running:
            await self.stop()
            self.start()

    async def _run(self) -> None:
        while True:
            started = self._monotonic()
            check = self.health.check
            error = await self._prober(self.address, self.port, check.timeout)
            if self.health.record(error is None, error) and self._on_change is not None:
                self._on_change()
            await self._sleep(max(0.0, check.interval - (self._monotonic() - started)))
