"""Keeps the in-process data plane in step with the `load_balancer` recipes:
starts, reconfigures (live) and drains them. Woken on apply and delete; resyncs
periodically so a port that was busy is retried."""

from __future__ import annotations

from flotilla.server.context import ServerContext
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services.load_balancers import (
    LOAD_BALANCER,
    config_of,
    live_load_balancers,
    plane_key,
)


class LoadBalancers(ReconcileLoop):
    name = "load_balancers"

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.wakers.load_balancers, ctx.settings.resync_seconds * 5)
        self.ctx = ctx

    async def step(self) -> None:
        async with self.ctx.sessions() as session:
            recipes = await live_load_balancers(session)
        plane = self.ctx.lb_plane
        wanted = {plane_key(r): config_of(r, self.ctx.settings) for r in recipes}
        for key, config in wanted.items():
            await plane.put(key, config)
        for key in plane.running_keys():
            if key.startswith(f"{LOAD_BALANCER}:") and key not in wanted:
                await plane.remove(key)
