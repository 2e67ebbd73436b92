"""`LoadBalancer`: runs the listeners of one `LoadBalancerConfig` on the current
event loop and reconfigures them live.

    lb = LoadBalancer(config)
    await lb.start()          # binds every listener, starts health checks
    await lb.apply(new)       # add/remove listeners and backends, no restart
    lb.snapshot()             # counters and health as plain dicts
    await lb.drain(30)        # stop accepting, let connections finish, then stop
    await lb.stop()           # stop accepting and drop every connection

`apply` never touches an established connection: a removed backend goes Draining
(no new connections; open ones continue, then it disappears), a removed listener
stops accepting and lingers, Draining, until its last connection ends. Used by
`serve.py` and, later, the server's `load_balancer` resource.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable

from flotilla.errors import FlotillaError
from flotilla.lb.config import Backend, Listener, LoadBalancerConfig
from flotilla.lb.health import Health, HealthChecker, Prober, Sleep, tcp_probe
from flotilla.lb.proxy import ClientSide
from flotilla.lb.runtime import BackendRuntime, ListenerRuntime
from flotilla.lb.snapshot import LoadBalancerSnapshot, balancer_snapshot
from flotilla.listeners import close_server

log = logging.getLogger("flotilla.lb")
BACKLOG = 4096


class LoadBalancerError(FlotillaError):
    """Root of the data plane's own errors."""


class ListenError(LoadBalancerError):
    """A listener could not bind its port; the rest of the config was applied."""


class LoadBalancer:
    def __init__(
        self,
        config: LoadBalancerConfig,
        *,
        prober: Prober = tcp_probe,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.time,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        # Several processes serving the same ports (`serve --workers`): the kernel
        # spreads new connections over their sockets (SO_REUSEPORT).
        self.reuse_port = reuse_port
        self.listeners: dict[int, ListenerRuntime] = {}  # by port
        self.retired: list[ListenerRuntime] = []  # removed, draining their connections
        self._prober = prober
        self._sleep = sleep
        self._clock = clock
        self._lock = asyncio.Lock()
        self._started = False

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self) -> None:
        """Bind every listener and start health checks. Raises `ListenError`."""
        self._started = True
        await self.apply(self.config)

    async def apply(self, config: LoadBalancerConfig) -> None:
        """Move the running balancer to `config` without dropping connections.
        Before `start()` it only records the config."""
        async with self._lock:
            self.config = config
            if not self._started:
                return
            wanted = {li.port: li for li in config.listeners}
            for port, runtime in list(self.listeners.items()):
                target = wanted.get(port)
                if target is None or target.host != runtime.config.host:
                    await self._retire(runtime)
            failures = []
            for port, listener in wanted.items():
                runtime = self.listeners.get(port) or ListenerRuntime(listener)
                runtime.configure(listener)
                await self._sync_backends(runtime, listener)
                if runtime.server is None:
                    try:
                        await self._listen(runtime)
                    except OSError as e:
                        await self._retire(runtime)
                        failures.append(f"{listener.host}:{port}: {e.strerror or e}")
                        continue
                self.listeners[port] = runtime
            self._purge()
            if failures:
                raise ListenError("cannot listen on " + "; ".join(failures))

    async def stop(self) -> None:
        """Stop accepting, stop health checks and drop every open connection."""
        async with self._lock:
            self._started = False
            runtimes = [*self.listeners.values(), *self.retired]
            for runtime in runtimes:
                await self._retire(runtime)
                for conn in list(runtime.connections):
                    conn.abort()
            for runtime in runtimes:
                if runtime.server is not None:
                    await runtime.server.wait_closed()
            self._purge()

    async def drain(self, grace: float) -> bool:
        """Stop accepting, wait up to `grace` seconds for open connections to end,
        then `stop()`. True when every connection ended on its own."""
        async with self._lock:
            for runtime in list(self.listeners.values()):
                await self._retire(runtime)
        idle = asyncio.Event()

        def emptied() -> None:
            self._purge()
            idle.set()

        for runtime in self.retired:
            runtime.on_empty = emptied
        clean = True
        try:
            async with asyncio.timeout(grace):
                while self.retired:
                    idle.clear()
                    await idle.wait()
        except TimeoutError:
            clean = False
        await self.stop()
        return clean

    def snapshot(self) -> LoadBalancerSnapshot:
        self._purge()
        return balancer_snapshot(self.name, [*self.listeners.values(), *self.retired])

    # -- internals -------------------------------------------------------------

    async def _listen(self, runtime: ListenerRuntime) -> None:
        loop = asyncio.get_running_loop()
        config = runtime.config
        runtime.server = await loop.create_server(
            functools.partial(ClientSide, runtime),
            config.host,
            config.port,
            backlog=BACKLOG,
            reuse_address=True,
            reuse_port=self.reuse_port or None,
        )

    async def _retire(self, runtime: ListenerRuntime) -> None:
        """Stop accepting on `runtime`; its open connections continue."""
        if self.listeners.get(runtime.config.port) is runtime:
            del self.listeners[runtime.config.port]
        if runtime.server is not None:
            await close_server(runtime.server)
        for backend in list(runtime.backends.values()):
            await self._drain_backend(runtime, backend)
        runtime.rebuild()
        if not runtime.draining:
            runtime.draining = True
            runtime.on_empty = self._purge
            self.retired.append(runtime)
            self._purge()

    def _purge(self) -> None:
        self.retired = [r for r in self.retired if not r.finished]

    async def _sync_backends(self, runtime: ListenerRuntime, listener: Listener) -> None:
        wanted = {b.key: b for b in listener.backends}
        for key, backend in list(runtime.backends.items()):
            if key not in wanted:
                await self._drain_backend(runtime, backend)
        for key, config in wanted.items():
            found = runtime.backends.get(key)
            if found is None:
                found = runtime.backends[key] = self._new_backend(runtime, config)
            found.draining = False  # re-added while draining: serve again
            backend = found
            if backend.checker is None:
                backend.checker = self._checker(runtime, backend)
                backend.checker.start()
            else:
                await backend.checker.update(listener.health_check)
        runtime.rebuild()

    def _new_backend(self, runtime: ListenerRuntime, config: Backend) -> BackendRuntime:
        health = Health(runtime.config.health_check, clock=self._clock)
        return BackendRuntime(config, health)

    def _checker(self, runtime: ListenerRuntime, backend: BackendRuntime) -> HealthChecker:
        backend.health.check = runtime.config.health_check

        def changed() -> None:
            log.info(
                "lb %s port %d backend %s is now %s",
                self.name,
                runtime.config.port,
                backend.key,
                backend.health.state.value,
            )
            runtime.health_changed()

        return HealthChecker(
            backend.address,
            backend.port,
            backend.health,
            on_change=changed,
            prober=self._prober,
            sleep=self._sleep,
        )

    async def _drain_backend(self, runtime: ListenerRuntime, backend: BackendRuntime) -> None:
        backend.draining = True
        backend.online = False
        if backend.checker is not None:
            await backend.checker.stop()
            backend.checker = None
        if backend.active <= 0 and runtime.backends.get(backend.key) is backend:
            del runtime.backends[backend.key]
