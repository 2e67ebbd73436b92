"""Which backend a new connection goes to. Pure: no I/O, no clock.

Each selector is built once per change of the backend set (`balancer.apply`) and
told about health changes through `refresh()`, so the accept path does a dict lookup
(source hash) or an index step (round robin) and nothing more.

Source-IP hashing is rendezvous (highest random weight) hashing over every configured
backend, Online or not: a client's order of preference depends only on its IP and the
backend keys, so a backend going Offline or being removed moves its own clients and no
one else's, and they come back when it does. Fallbacks (a refused connect) follow the
same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from typing import Protocol, TypeVar

from flotilla.lb.config import Algorithm

CACHE_LIMIT = 65536  # source IPs whose hash order is remembered


class Candidate(Protocol):
    key: str
    online: bool  # healthy and not draining
    active: int  # connections open or being opened


B = TypeVar("B", bound=Candidate)


def weight(key: str, ip: str) -> int:
    return int.from_bytes(blake2b(f"{key}|{ip}".encode(), digest_size=8).digest(), "big")


def rendezvous_order(ip: str, backends: Sequence[B]) -> tuple[B, ...]:
    """Backends in `ip`'s order of preference (highest weight first)."""
    return tuple(sorted(backends, key=lambda b: weight(b.key, ip), reverse=True))


class Selector(Protocol[B]):
    def pick(self, ip: str) -> B | None: ...

    def fallback(self, ip: str, tried: Sequence[B]) -> B | None: ...

    def refresh(self) -> None: ...


class SourceHash(Selector[B]):
    def __init__(self, backends: Sequence[B]) -> None:
        self._backends = tuple(backends)
        self._orders: dict[str, tuple[B, ...]] = {}

    def _order(self, ip: str) -> tuple[B, ...]:
        order = self._orders.get(ip)
        if order is None:
            if len(self._orders) >= CACHE_LIMIT:
                self._orders.clear()
            order = self._orders[ip] = rendezvous_order(ip, self._backends)
        return order

    def pick(self, ip: str) -> B | None:
        for backend in self._order(ip):
            if backend.online:
                return backend
        return None

    def fallback(self, ip: str, tried: Sequence[B]) -> B | None:
        for backend in self._order(ip):
            if backend.online and backend not in tried:
                return backend
        return None

    def refresh(self) -> None:
        pass  # the order covers Offline backends too; `pick` skips them


class RoundRobin(Selector[B]):
    def __init__(self, backends: Sequence[B]) -> None:
        self._backends = tuple(backends)
        self._online: list[B] = []
        self._next = 0
        self.refresh()

    def refresh(self) -> None:
        self._online = [b for b in self._backends if b.online]

    def pick(self, ip: str) -> B | None:
        online = self._online
        if not online:
            return None
        index = self._next % len(online)
        self._next = index + 1
        return online[index]

    def fallback(self, ip: str, tried: Sequence[B]) -> B | None:
        rest = [b for b in self._online if b not in tried]
        return rest[0] if rest else None


class LeastConnections(RoundRobin[B]):
    """The Online backend with the fewest connections; ties rotate."""

    def pick(self, ip: str) -> B | None:
        online = self._online
        count = len(online)
        if not count:
            return None
        start = self._next % count
        self._next = start + 1
        best = online[start]
        for i in range(1, count):
            backend = online[(start + i) % count]
            if backend.active < best.active:
                best = backend
        return best

    def fallback(self, ip: str, tried: Sequence[B]) -> B | None:
        rest = [b for b in self._online if b not in tried]
        return min(rest, key=lambda b: b.active) if rest else None


def make_selector(algorithm: Algorithm, backends: Sequence[B]) -> Selector[B]:
    if algorithm is Algorithm.ROUND_ROBIN:
        return RoundRobin(backends)
    if algorithm is Algorithm.LEAST_CONNECTIONS:
        return LeastConnections(backends)
    return SourceHash(backends)
