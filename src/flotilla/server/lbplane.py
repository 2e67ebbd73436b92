"""The load balancers running inside the server process: one `flotilla.lb`
`LoadBalancer` per load balancer resource (a `load_balancer` recipe, or a
deployment's), reconfigured live as the resources change.

The reconcilers own the *what* (`put` a config under a key, `remove` a key); this
object owns the sockets. A listener that cannot bind (port taken) is kept as an
error on its key and retried at the next `put`; removing a key drains its open
connections in the background before closing. Its Prometheus collector reports
every balancer it holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator

from flotilla.lb import ListenError, LoadBalancer, LoadBalancerCollector, LoadBalancerConfig
from flotilla.lb.snapshot import LoadBalancerSnapshot

log = logging.getLogger("flotilla.lb")
DRAIN_SECONDS = 30.0


class LoadBalancerPlane:
    def __init__(self, drain_seconds: float = DRAIN_SECONDS) -> None:
        self.balancers: dict[str, LoadBalancer] = {}
        self.errors: dict[str, str] = {}
        self.drain_seconds = drain_seconds
        self._draining: dict[asyncio.Task[bool], LoadBalancer] = {}
        self.collector = LoadBalancerCollector(lambda: list(self.balancers.values()))

    async def put(
        self, key: str, config: LoadBalancerConfig, on_demand: Callable[[], None] | None = None
    ) -> None:
        """Run `config` under `key`: start it, or move the running one to it without
        dropping connections. A bind failure is kept in `errors[key]`. `on_demand`
        is called when a listener holds a connection for want of a backend."""
        balancer = self.balancers.get(key)
        if balancer is not None and balancer.config == config and key not in self.errors:
            return
        fresh = balancer is None
        if balancer is None:
            balancer = self.balancers[key] = LoadBalancer(config)
        try:
            await (balancer.start() if fresh else balancer.apply(config))
        except ListenError as e:
            if self.errors.get(key) != str(e):
                log.warning("load balancer %s: %s", config.name, e)
            self.errors[key] = str(e)
        else:
            self.errors.pop(key, None)
        for runtime in balancer.listeners.values():
            runtime.on_demand = on_demand

    async def remove(self, key: str) -> None:
        balancer = self.balancers.pop(key, None)
        self.errors.pop(key, None)
        if balancer is not None:
            task = asyncio.create_task(balancer.drain(self.drain_seconds))
            self._draining[task] = balancer
            task.add_done_callback(lambda done: self._draining.pop(done, None))

    def running_keys(self) -> Iterator[str]:
        return iter(list(self.balancers))

    def snapshot(self, key: str) -> LoadBalancerSnapshot | None:
        balancer = self.balancers.get(key)
        return balancer.snapshot() if balancer is not None else None

    async def close(self) -> None:
        """Stop everything now (server shutdown), draining ones included."""
        draining = list(self._draining.items())
        for task, _ in draining:
            task.cancel()
        await asyncio.gather(*(task for task, _ in draining), return_exceptions=True)
        for balancer in [*self.balancers.values(), *(b for _, b in draining)]:
            await balancer.stop()
        self.balancers.clear()
