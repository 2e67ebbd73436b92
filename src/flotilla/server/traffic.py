"""Counting requests per deployment, for autoscaling on requests per second. The
front door (`frontdoor.py`) counts; the deployment reconciler reads."""

from __future__ import annotations

import time
from collections import deque


class RequestMeter:
    """Per deployment, in this process: requests per second over the last `window`
    seconds and requests in flight (what autoscaling reads)."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._in_flight: dict[str, int] = {}

    def started(self, key: str) -> None:
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def finished(self, key: str) -> None:
        self._in_flight[key] = max(0, self._in_flight.get(key, 0) - 1)

    def in_flight(self, key: str) -> int:
        """Requests being answered now: concurrent connections, for autoscaling."""
        return self._in_flight.get(key, 0)

    def hit(self, key: str) -> None:
        self._hits.setdefault(key, deque()).append(time.monotonic())

    def rate(self, key: str) -> float:
        hits = self._hits.get(key)
        if not hits:
            return 0.0
        horizon = time.monotonic() - self.window
        while hits and hits[0] < horizon:
            hits.popleft()
        return len(hits) / self.window
