"""The app factory. `create_app(settings)` wires the store, the backend and the
reconcilers into a FastAPI app; `flo server` serves it with uvicorn."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from flotilla import __version__
from flotilla.clock import Clock
from flotilla.compute.agents.router import NodeRouter
from flotilla.compute.base import ComputeBackend
from flotilla.compute.local import LocalBackend
from flotilla.compute.local.provider import LocalProvider
from flotilla.compute.provider import Provider
from flotilla.compute.sim.provider import SimConfig, SimProvider
from flotilla.compute.virtual.backend import VirtualBackend
from flotilla.config import Settings
from flotilla.server.audit import AuditMiddleware
from flotilla.server.auth.keys import ensure_signing_key
from flotilla.server.auth.tokens import TokenPolicy
from flotilla.server.bodylimit import BodyLimit
from flotilla.server.context import ServerContext
from flotilla.server.db.engine import create_engine, session_factory
from flotilla.server.db.migrate import upgrade_to_head
from flotilla.server.db.writes import WriteLog
from flotilla.server.errors import install_error_handlers, install_storage_error_handler
from flotilla.server.frontdoor import router as frontdoor_router
from flotilla.server.openapi import build_openapi
from flotilla.server.reconcilers.agent_nodes import AgentNodes
from flotilla.server.reconcilers.cron import Cron
from flotilla.server.reconcilers.deployments import Deployments
from flotilla.server.reconcilers.fleets import Fleets
from flotilla.server.reconcilers.load_balancers import LoadBalancers
from flotilla.server.reconcilers.metering import Metering
from flotilla.server.reconcilers.retention import Retention
from flotilla.server.reconcilers.scheduler import Scheduler
from flotilla.server.reconcilers.sim_hosts import SimHosts
from flotilla.server.reconcilers.ssh_fleets import SshFleets
from flotilla.server.reconcilers.supervision import Supervision
from flotilla.server.reconnect import RetryDroppedConnection
from flotilla.server.routers import (
    agents,
    audit,
    auth,
    budgets,
    deployments,
    fleets,
    groups,
    jobs,
    load_balancers,
    metrics,
    nodes,
    offers,
    pods,
    projects,
    queue,
    recipes,
    runs,
    secrets,
    status,
    tokens,
    usage,
    users,
)
from flotilla.server.secretbox import SecretBox
from flotilla.server.security import bootstrap_admin
from flotilla.server.services.fleets.node_isolation import log_isolation
from flotilla.server.services.fleets.nodes import ensure_local_node
from flotilla.server.ssh.gateway import SshGateway

log = logging.getLogger("flotilla.server")


def create_app(
    settings: Settings,
    clock: Clock | None = None,
    backend: ComputeBackend | None = None,
    providers: dict[str, Provider] | None = None,
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.data_dir, 0o700)  # tokens, keys and logs live here
        engine = create_engine(settings.db_url)
        await upgrade_to_head(engine)
        local = LocalBackend(
            settings.data_dir, settings.local_gpus, settings.agent_idle_exit_seconds
        )
        clock_now = (clock or Clock()).now()
        local_isolation = settings.local_isolation or local.inventory.labels["isolation"]
        log_isolation(settings, local_isolation)
        logs = settings.data_dir / "node-logs"
        router = NodeRouter(local, logs, VirtualBackend(logs)) if backend is None else None
        writes = WriteLog()
        ctx = ServerContext(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine, settings.unix_id_range, writes),
            writes=writes,
            backend=backend or router or local,
            secret_box=SecretBox.from_settings(settings.secret_key, settings.data_dir),
            providers=providers if providers is not None else default_providers(settings, local),
            clock=clock or Clock(),
            metrics_public=os.environ.get("FLOTILLA_METRICS_PUBLIC", "").lower()
            in ("1", "true", "yes"),
            local_isolation=local_isolation,
        )
        async with ctx.transaction() as session:
            await bootstrap_admin(
                session, settings.admin_token, settings.admin_token_file, clock_now
            )
            await ensure_signing_key(
                session, ctx.secret_box, clock_now, TokenPolicy.of(settings).access_ttl
            )
            if settings.local_node:
                await ensure_local_node(
                    session, local.inventory, clock_now, local_isolation, settings.run_as_user
                )
        scheduler = Scheduler(ctx)
        supervision = Supervision(ctx, scheduler)
        loops = [
            scheduler,
            supervision,
            Cron(ctx),
            Fleets(ctx),
            Metering(ctx),
            LoadBalancers(ctx),
            Deployments(ctx),
            Retention(ctx),
        ]
        agent_nodes = AgentNodes(ctx, router) if router is not None else None
        if agent_nodes is not None:
            loops += [agent_nodes, SshFleets(ctx)]
            if settings.sim_hosts:
                loops.append(SimHosts(ctx))
        ctx.metrics_collectors.append(ctx.lb_plane.collector)
        await ctx.backend.start(supervision.on_task_event)
        app.state.ctx = ctx
        app.state.loops = loops
        if settings.ssh_port is not None:
            ctx.ssh_gateway = SshGateway(ctx)
            await ctx.ssh_gateway.start(settings.host, settings.ssh_port, settings.port)
        if agent_nodes is not None:  # remote tasks must not pass for lost local ones
            await agent_nodes.attach_all()
        # Re-adopt whatever ran while we were down before taking new work.
        await supervision.step()
        for loop in loops:
            loop.start()
        log.info(
            "flotilla %s serving on %s (data in %s)",
            __version__,
            settings.db_url.split("://")[0],
            settings.data_dir,
        )
        try:
            yield
        finally:
            for loop in loops:
                await loop.stop()
            await ctx.lb_plane.close()
            if ctx.ssh_gateway is not None:
                await ctx.ssh_gateway.close()
            if (client := getattr(app.state, "frontdoor_client", None)) is not None:
                await client.aclose()
            await ctx.backend.close()
            await engine.dispose()

    app = FastAPI(
        title="Flotilla",
        version=__version__,
        description="An open-source control plane for GPU compute (Saturn Cloud-shaped API).",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_storage_error_handler(app)
    app.add_middleware(RetryDroppedConnection)
    # Inside the audit log's middleware, so that refused writes are audited too.
    app.add_middleware(
        BodyLimit, limit=settings.max_request_bytes, frontdoor_limit=settings.max_frontdoor_bytes
    )
    app.add_middleware(AuditMiddleware)
    for module in (
        audit,
        status,
        load_balancers,
        deployments,
        recipes,
        jobs,
        pods,
        runs,
        secrets,
        nodes,
        queue,
        fleets,
        offers,
    ):
        app.include_router(module.router)
    app.include_router(frontdoor_router)
    for module in (usage, budgets, metrics):  # metering, cost, budgets
        app.include_router(module.router)
    for module in (users, groups, projects, tokens, auth, agents):  # identity, logins, joins
        app.include_router(module.router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def default_providers(settings: Settings, local: LocalBackend) -> dict[str, Provider]:
    """This machine and the simulated cloud; real clouds plug in here."""
    sim = SimConfig.default(settings.sim_fabric_nodes, settings.sim_partitions)
    sim.provisioning_delay = settings.sim_provisioning_delay
    sim.virtual = settings.sim_virtual
    return {
        "local": LocalProvider(local.inventory, Clock().now()),
        "sim": SimProvider(sim),
    }
