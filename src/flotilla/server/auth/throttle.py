"""Slowing down password guessing: failed logins are counted per user name and per
source address over a sliding window; past the limit, further attempts (right
password or not) are refused with 429 until old failures leave the window. A
success clears the user name's count. In memory, per server process.

Called by the login route around `sessions.password_login`.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from flotilla.errors import ClientError

PER_USER = 5  # failures per user name in the window
PER_ADDRESS = 20  # failures per source address in the window (many names, one guesser)
WINDOW = 300.0  # seconds


class TooManyAttempts(ClientError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(
            f"too many failed logins; try again in {math.ceil(retry_after)} s",
            "too_many_attempts",
            429,
        )
        self.retry_after = retry_after


class LoginThrottle:
    def __init__(
        self,
        per_user: int = PER_USER,
        per_address: int = PER_ADDRESS,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"user": per_user, "address": per_address}
        self.window = window
        self.clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}

    def check(self, username: str, address: str) -> None:
        """Raise `TooManyAttempts` if either key is over its limit."""
        now = self.clock()
        waits = [
            self._wait(("user", username), now),
            self._wait(("address", address), now),
        ]
        if max(waits) > 0:
            raise TooManyAttempts(max(waits))

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        for key in (("user", username), ("address", address)):
            self._failures.setdefault(key, deque()).append(now)

    def succeeded(self, username: str) -> None:
        self._failures.pop(("user", username), None)

    def _wait(self, key: tuple[str, str], now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0.0
        if len(times) < self.limits[key[0]]:
            return 0.0
        # Free again when enough of the oldest failures have left the window.
        return times[len(times) - self.limits[key[0]]] + self.window - now
