"""Everything a request handler or reconciler needs, built once per server.

Handlers get it from `request.app.state.ctx`; reconcilers are constructed with it.
Holding it in one object keeps start-up and tests explicit (no module globals).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from flotilla.clock import Clock
from flotilla.compute.base import ComputeBackend
from flotilla.compute.provider import Provider
from flotilla.config import Settings
from flotilla.runtime.isolation import probe
from flotilla.server.auth.throttle import LoginThrottle
from flotilla.server.changes import Changes
from flotilla.server.db.writes import WriteLog
from flotilla.server.lbplane import LoadBalancerPlane
from flotilla.server.secretbox import SecretBox
from flotilla.server.traffic import RequestMeter

if TYPE_CHECKING:
    from flotilla.server.ssh.gateway import SshGateway


@dataclass
class ServerContext:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    backend: ComputeBackend
    secret_box: SecretBox
    # Where fleet nodes come from, by name ("local", "sim", a cloud).
    providers: dict[str, Provider] = field(default_factory=dict)
    clock: Clock = field(default_factory=Clock)
    # The runs and nodes `sessions` changed, for views kept between steps.
    writes: WriteLog = field(default_factory=WriteLog)
    # Who watches what changes (`changes.py`): routers announce, loops subscribe.
    changes: Changes = field(default_factory=Changes)
    # Extra Prometheus collectors served by `GET /metrics` next to the usage ones
    # (`routers/metrics.py`): a component registers its own here (the load balancer).
    metrics_collectors: list[Collector] = field(default_factory=list)
    # Serve `/metrics` without authentication, for scrapers (FLOTILLA_METRICS_PUBLIC=1).
    metrics_public: bool = False
    # The load balancers this process serves (load_balancer recipes, deployments).
    lb_plane: LoadBalancerPlane = field(default_factory=LoadBalancerPlane)
    # Requests per second through the deployments' front door (`frontdoor.py`).
    request_meter: RequestMeter = field(default_factory=lambda: RequestMeter())
    # Failed password logins (from the audit log), to refuse guessing (`auth/throttle.py`).
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # Deployment replicas (run ids) whose port has answered: the ones routed to.
    ready_replicas: set[str] = field(default_factory=set)
    # SSH access to tasks that allow it (`start_ssh`); None when the port is off.
    ssh_gateway: SshGateway | None = None
    # What this machine's agent can isolate (`runtime/isolation.probe`, or
    # FLOTILLA_LOCAL_ISOLATION): the nodes run by it (`local`, `sim`) have it.
    local_isolation: str = field(default_factory=lambda: probe().summary())

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on error."""
        async with self.sessions() as session, session.begin():
            yield session
