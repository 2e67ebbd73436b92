"""How many replicas a deployment wants, and how fast a failing one is restarted.
Pure: the deployment reconciler feeds it measurements and stores what it returns.

Autoscaling aims at `target` units of load per replica (concurrent connections, or
requests per second): `ceil(load / target)` within `[low, high]`. A higher need
must last `up_delay` seconds and a lower one `down_delay` before the count moves,
so a burst or a lull does not flap it. A deployment at zero that a client is
waiting on (`demand`) goes to one replica at once: that client is held, not
refused, while it starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

MAX_BACKOFF = 60.0


@dataclass(frozen=True)
class ScaleState:
    desired: int
    above_since: datetime | None = None
    below_since: datetime | None = None


@dataclass(frozen=True)
class ScalePolicy:
    low: int
    high: int
    target: float | None  # None: a fixed count, no autoscaling
    up_delay: float
    down_delay: float


def needed_replicas(policy: ScalePolicy, load: float) -> int:
    if policy.target is None:
        return policy.low
    return min(policy.high, max(policy.low, math.ceil(load / policy.target - 1e-9)))


def decide_scale(
    policy: ScalePolicy, state: ScaleState, load: float, demand: bool, now: datetime
) -> ScaleState:
    """The next state: the replica count to run and the timers that lead to it."""
    if policy.target is None:
        return ScaleState(policy.low)
    current = min(policy.high, max(policy.low, state.desired))
    if demand and current == 0:
        return ScaleState(max(1, policy.low))
    needed = needed_replicas(policy, load)
    if needed > current:
        since = state.above_since or now
        if (now - since).total_seconds() >= policy.up_delay:
            return ScaleState(needed)
        return ScaleState(current, above_since=since)
    if needed < current:
        since = state.below_since or now
        if (now - since).total_seconds() >= policy.down_delay:
            return ScaleState(needed)
        return ScaleState(current, below_since=since)
    return ScaleState(current)


def restart_backoff(recent_exits: int) -> float:
    """Seconds to wait before starting a replacement after `recent_exits` replicas
    exited on their own lately: none for the first, then 1, 2, 4 … up to a minute."""
    if recent_exits <= 1:
        return 0.0
    return float(min(MAX_BACKOFF, 2 ** (recent_exits - 2)))
