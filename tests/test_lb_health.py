"""TCP health checks: the consecutive-count state machine, the checker loop with a
fake prober and sleep, and real backends going away and coming back."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from flotilla.lb.config import HealthCheck
from flotilla.lb.health import Health, HealthChecker, HealthState, Probe
from flotilla.lb.runtime import BackendState
from flotilla.lb.testing import SOURCES_FOR_TESTS, TagBackend, eventually, greet, rig


def streak_into(history: Sequence[Probe], state: HealthState) -> list[Probe]:
    """The run of same-result probes that ended with the last switch into `state`."""
    probes = list(history)
    switch = max(
        i
        for i, p in enumerate(probes)
        if p.state is state and (i == 0 or probes[i - 1].state is not state)
    )
    start = switch
    while start > 0 and probes[start - 1].ok == probes[switch].ok:
        start -= 1
    assert start > 0, "history too short to see where the streak began"
    return probes[start : switch + 1]


def test_state_machine_counts_consecutive_results() -> None:
    health = Health(HealthCheck(failure_count=2, success_count=3))
    assert health.state == "online"  # presumed healthy when added
    assert not health.record(False)
    assert not health.record(True)  # a success resets the failure streak
    assert not health.record(False)
    assert health.record(False, "refused")
    assert health.state == "offline"
    assert [health.record(ok) for ok in (True, True, False, True, True)] == [False] * 5
    assert health.record(True)
    assert health.state == "online"
    assert [(t.old, t.new) for t in health.transitions] == [
        (HealthState.ONLINE, HealthState.OFFLINE),
        (HealthState.OFFLINE, HealthState.ONLINE),
    ]
    assert health.probes == 10
    assert health.probes_failed == 4
    assert health.history[3].error == "refused"


def test_history_is_bounded() -> None:
    health = Health(HealthCheck(), history=5)
    for _ in range(20):
        health.record(True)
    assert len(health.history) == 5
    assert health.probes == 20


class ScriptedProber:
    def __init__(self, results: list[bool]) -> None:
        self.results = results
        self.calls: list[tuple[str, int, float]] = []

    async def __call__(self, address: str, port: int, within: float) -> str | None:
        self.calls.append((address, port, within))
        ok = self.results.pop(0) if self.results else True
        return None if ok else "refused"


class RecordingSleep:
    """Returns at once for the first `rounds` sleeps, then blocks for good."""

    def __init__(self, rounds: int) -> None:
        self.delays: list[float] = []
        self.rounds = rounds

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) >= self.rounds:
            await asyncio.Event().wait()


async def test_checker_uses_every_health_check_field() -> None:
    check = HealthCheck(timeout=0.7, interval=2.5, failure_count=3, success_count=1)
    prober = ScriptedProber([False, False, False, True])
    sleep = RecordingSleep(rounds=5)
    changes: list[HealthState] = []
    health = Health(check)
    checker = HealthChecker(
        "10.0.0.1",
        80,
        health,
        on_change=lambda: changes.append(health.state),
        prober=prober,
        sleep=sleep,
        monotonic=lambda: 100.0,  # probes take no time: the sleep is the whole interval
    )
    checker.start()
    await eventually(lambda: len(sleep.delays) == 5, what="five probes")
    await checker.stop()
    assert len(prober.calls) == 5
    assert prober.calls[0] == ("10.0.0.1", 80, 0.7)
    assert set(sleep.delays) == {2.5}
    assert changes == [HealthState.OFFLINE, HealthState.ONLINE]  # after 3 failures, 1 success
    assert [p.state for p in health.history] == [
        HealthState.ONLINE,
        HealthState.ONLINE,
        HealthState.OFFLINE,
        HealthState.ONLINE,
        HealthState.ONLINE,
    ]


async def test_checker_update_applies_a_new_interval_at_once() -> None:
    prober = ScriptedProber([])
    health = Health(HealthCheck(interval=3600))
    checker = HealthChecker("127.0.0.1", 1, health, prober=prober)
    checker.start()
    await eventually(lambda: len(prober.calls) == 1, what="the first probe")
    await checker.update(HealthCheck(interval=0.01, timeout=0.3))
    await eventually(lambda: len(prober.calls) >= 4, within=2, what="probes at the new interval")
    await checker.stop()
    assert prober.calls[-1][2] == 0.3
    assert not checker.running


async def test_backend_goes_offline_and_online_after_exact_counts() -> None:
    check = HealthCheck(interval=0.05, timeout=0.5, failure_count=3, success_count=4)
    async with rig("ab", health_check=check) as r:
        victim, other = r.backends
        runtime = r.runtime(victim)
        mine = [s for s in SOURCES_FOR_TESTS if await greet(r.port, s) == victim.name]
        assert mine, "no source hashed to the victim"
        await eventually(lambda: runtime.health.probes >= 2, what="probes")
        await victim.stop()
        await eventually(lambda: runtime.state is BackendState.OFFLINE, what="Offline")
        streak = streak_into(runtime.health.history, HealthState.OFFLINE)
        assert [p.ok for p in streak] == [False] * 3
        assert [p.state for p in streak[:-1]] == [HealthState.ONLINE] * 2
        # Offline: its clients go elsewhere and it is not even tried.
        assert {await greet(r.port, s) for s in mine} == {other.name}
        assert runtime.failed_connects == 0

        revived = await TagBackend(victim.name, victim.port).start()
        r.backends[0] = revived
        await eventually(lambda: runtime.state is BackendState.ONLINE, what="Online again")
        streak = streak_into(runtime.health.history, HealthState.ONLINE)
        assert [p.ok for p in streak] == [True] * 4
        assert [p.state for p in streak[:-1]] == [HealthState.OFFLINE] * 3
        # Consistent hashing: its clients come back to it.
        assert {await greet(r.port, s) for s in mine} == {victim.name}


async def test_changed_health_check_counts_take_effect_live() -> None:
    check = HealthCheck(interval=0.05, timeout=0.5, failure_count=2, success_count=2)
    async with rig("a", health_check=check) as r:
        victim = r.backends[0]
        runtime = r.runtime(victim)
        await r.lb.apply(
            r.config(health_check=HealthCheck(interval=0.04, timeout=0.3, failure_count=5))
        )
        assert runtime.health.check.failure_count == 5
        await eventually(lambda: runtime.health.probes >= 2, what="probes at the new interval")
        await victim.stop()
        await eventually(lambda: runtime.state is BackendState.OFFLINE, what="Offline")
        assert [p.ok for p in streak_into(runtime.health.history, HealthState.OFFLINE)] == [
            False
        ] * 5
        await r.lb.apply(r.config(health_check=check.model_copy(update={"success_count": 1})))
        r.backends[0] = await TagBackend(victim.name, victim.port).start()
        await eventually(lambda: runtime.state is BackendState.ONLINE, what="Online")
        streak = streak_into(runtime.health.history, HealthState.ONLINE)
        assert [p.ok for p in streak] == [True]
