"""Live state of a running load balancer: one `ListenerRuntime` per listening port
and one `BackendRuntime` per (listener, backend), with their counters.

Owned by `balancer.LoadBalancer`, mutated by the proxy protocols on the accept and
data paths (plain attribute increments, all on the loop's thread), read by
`snapshot()` and the Prometheus collector.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from enum import StrEnum
from typing import TYPE_CHECKING

from flotilla.lb.choice import Selector, make_selector
from flotilla.lb.config import Backend, Listener
from flotilla.lb.health import Health, HealthChecker, HealthState

if TYPE_CHECKING:
    from flotilla.lb.proxy import ClientSide

ALLOW_CACHE_LIMIT = 65536


class BackendState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    DRAINING = "draining"  # removed from the config; open connections finish


class BackendRuntime:
    """One backend of one listener. `bytes_in` counts client→backend bytes,
    `bytes_out` backend→client (HAProxy's bin/bout)."""

    __slots__ = (
        "active",
        "address",
        "bytes_in",
        "bytes_out",
        "checker",
        "config",
        "draining",
        "failed_connects",
        "health",
        "key",
        "online",
        "port",
        "total",
    )

    def __init__(self, config: Backend, health: Health) -> None:
        self.config = config
        self.key = config.key
        self.address = config.address
        self.port = config.port
        self.health = health
        self.checker: HealthChecker | None = None
        self.draining = False
        self.online = health.state is HealthState.ONLINE
        self.active = 0  # connections open or being opened
        self.total = 0  # connections established
        self.bytes_in = 0
        self.bytes_out = 0
        self.failed_connects = 0

    @property
    def state(self) -> BackendState:
        if self.draining:
            return BackendState.DRAINING
        return BackendState(self.health.state.value)

    def sync_online(self) -> None:
        self.online = not self.draining and self.health.state is HealthState.ONLINE


class ListenerRuntime:
    """One listening port: its config, server, backends (draining ones included),
    selector and counters."""

    def __init__(self, config: Listener) -> None:
        self.config = config
        self.server: asyncio.AbstractServer | None = None
        self.backends: dict[str, BackendRuntime] = {}
        self.selector: Selector[BackendRuntime] = make_selector(config.algorithm, [])
        self.connections: set[ClientSide] = set()
        self.draining = False  # removed from the config
        self.on_empty: Callable[[], None] | None = None  # called when the last connection ends
        # Called when a connection is held for want of a backend (`hold_seconds`):
        # the owner starts one (a deployment scaled to zero).
        self.on_demand: Callable[[], None] | None = None
        self.waiters: list[asyncio.Future[None]] = []  # held connections
        self.accepted = 0
        self.refused = 0  # by the allow-list
        self.no_backend = 0  # closed because no backend was Online or reachable
        self.connect_timeout = config.health_check.timeout
        self._networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._allowed: dict[str, bool] = {}
        self.configure(config)

    def configure(self, config: Listener) -> None:
        """Take a new config for the same port. Backends are diffed by the balancer,
        which calls `rebuild()` afterwards."""
        self.config = config
        self.connect_timeout = config.health_check.timeout
        self._networks = [ipaddress.ip_network(cidr) for cidr in config.allow]
        self._allowed = {}

    def rebuild(self) -> None:
        """Recompute the selector after the backend set or the algorithm changed."""
        for backend in self.backends.values():
            backend.sync_online()
        serving = [b for b in self.backends.values() if not b.draining]
        self.selector = make_selector(self.config.algorithm, serving)
        self._wake_waiters()

    def health_changed(self) -> None:
        for backend in self.backends.values():
            backend.sync_online()
        self.selector.refresh()
        self._wake_waiters()

    def _wake_waiters(self) -> None:
        """Let held connections try again once some backend is online."""
        if self.waiters and any(b.online for b in self.backends.values()):
            for waiter in self.waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self.waiters.clear()

    def allowed(self, ip: str) -> bool:
        if not self._networks:
            return True
        verdict = self._allowed.get(ip)
        if verdict is None:
            if len(self._allowed) >= ALLOW_CACHE_LIMIT:
                self._allowed.clear()
            address = ipaddress.ip_address(ip)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
                address = address.ipv4_mapped
            verdict = self._allowed[ip] = any(address in net for net in self._networks)
        return verdict

    def release(self, backend: BackendRuntime) -> None:
        """A connection to `backend` ended (or moved on to another backend)."""
        backend.active -= 1
        if backend.draining and backend.active <= 0 and self.backends.get(backend.key) is backend:
            del self.backends[backend.key]

    @property
    def finished(self) -> bool:
        """A removed listener whose last connection has ended."""
        return self.draining and not self.connections
