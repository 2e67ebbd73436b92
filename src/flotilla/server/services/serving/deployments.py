"""Deployments' pieces the reconciler and the API share: their stored state, their
replica runs, the load balancer config that routes to the ready replicas, and
their views.

A replica is a run of the deployment's recipe whose spec is `replica_job(ports)`:
one task serving on host ports chosen for it (`replica_ports`; a command that names
its route's container port keeps that one), tagged with the recipe version it runs
(`recipe_version`) so a rolling update can tell old from new.

A deployment runs until stopped: its latest `started`/`stopped` event says which
(`is_stopped`), so it survives a restart without a column of its own. Saturn's
client creates deployments stopped (`sc apply` without `--start` waits for `sc
start`); Flotilla's own applies start them at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.status import RunStatus
from flotilla.lb import Backend, Listener, LoadBalancerConfig
from flotilla.recipes.commands import with_packages
from flotilla.recipes.deployment import DeploymentSpec
from flotilla.recipes.types import DEPLOYMENT
from flotilla.server.db.models import (
    DeploymentStateModel,
    EventModel,
    RecipeModel,
    RunModel,
    TaskModel,
)
from flotilla.server.services.events import record_event
from flotilla.server.services.recipes import live_recipes
from flotilla.server.services.runs.launch import free_port
from flotilla.server.services.runs.runs import create_run

ACTOR = "deployments"
RECENT = timedelta(minutes=5)
# The events that start and stop a deployment (`set_stopped`).
STARTED, STOPPED = "started", "stopped"


def spec_of(recipe: RecipeModel) -> DeploymentSpec:
    return DeploymentSpec.model_validate(recipe.spec)


async def live_deployments(session: AsyncSession) -> Sequence[RecipeModel]:
    return await live_recipes(session, DEPLOYMENT)


async def deployment_state(
    session: AsyncSession, recipe: RecipeModel, spec: DeploymentSpec
) -> DeploymentStateModel:
    """The stored state, created on first sight with the low replica count and a
    load balancer port for every route (the route's own `port`, else a free one)."""
    state = await session.get(DeploymentStateModel, recipe.id)
    if state is None:
        state = DeploymentStateModel(
            recipe_id=recipe.id,
            desired_replicas=spec.replica_range()[0],
            route_ports={},
            restarts=0,
        )
        session.add(state)
    ports = dict(state.route_ports or {})
    for route in spec.routes:
        key = str(route.container_port)
        if route.port is not None:
            ports[key] = route.port
        elif key not in ports:
            ports[key] = free_port()
    ports = {k: v for k, v in ports.items() if int(k) in {r.container_port for r in spec.routes}}
    if ports != state.route_ports:
        state.route_ports = ports
    return state


@dataclass
class Replica:
    run: RunModel
    task: TaskModel | None

    @property
    def address(self) -> str | None:
        return self.task.address if self.task is not None and self.task.address else None

    def port(self, container_port: int) -> int | None:
        ports = self.run.replica_ports or {}
        value = ports.get(str(container_port))
        return int(value) if value is not None else None

    @property
    def running(self) -> bool:
        return self.run.status == RunStatus.RUNNING.value and self.address is not None

    @property
    def stopping(self) -> bool:
        return self.run.stop_requested_at is not None


async def active_replicas(session: AsyncSession, recipe: RecipeModel) -> list[Replica]:
    runs = (
        (
            await session.execute(
                select(RunModel).where(
                    RunModel.recipe_id == recipe.id,
                    RunModel.status.in_([s.value for s in RunStatus if s.is_active()]),
                )
            )
        )
        .scalars()
        .all()
    )
    tasks: dict[str, TaskModel] = {}
    if runs:
        rows = await session.execute(
            select(TaskModel).where(TaskModel.run_id.in_([r.id for r in runs]))
        )
        for task in rows.scalars():
            run = next(r for r in runs if r.id == task.run_id)
            if task.attempt == run.attempt:
                tasks[run.id] = task
    return [Replica(run, tasks.get(run.id)) for run in sorted(runs, key=lambda r: r.number)]


async def recent_exits(session: AsyncSession, recipe: RecipeModel, now: datetime) -> list[datetime]:
    """When the replicas of this version that ended on their own (not stopped)
    lately ended, latest last."""
    rows = await session.execute(
        select(RunModel.finished_at).where(
            RunModel.recipe_id == recipe.id,
            RunModel.recipe_version == recipe.version,
            RunModel.finished_at > now - RECENT,
            RunModel.stop_reason.is_(None),
            RunModel.status.in_(
                [RunStatus.SUCCEEDED.value, RunStatus.FAILED.value, RunStatus.ERROR.value]
            ),
        )
    )
    return sorted(ended for (ended,) in rows if ended is not None)


async def is_stopped(session: AsyncSession, recipe_id: str) -> bool:
    """Whether the deployment's latest start/stop event is a stop."""
    query = (
        select(EventModel.kind)
        .where(EventModel.recipe_id == recipe_id, EventModel.kind.in_([STARTED, STOPPED]))
        .order_by(EventModel.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar() == STOPPED


async def set_stopped(
    session: AsyncSession, recipe: RecipeModel, stopped: bool, actor: str, now: datetime, why: str
) -> bool:
    """Stop or start the deployment (its replicas follow at the reconciler's next
    step); False when it already was. `why` ends the event's message."""
    if await is_stopped(session, recipe.id) == stopped:
        return False
    record_event(
        session,
        kind=STOPPED if stopped else STARTED,
        message=f"deployment {'stopped' if stopped else 'started'}: {why}",
        actor=actor,
        now=now,
        recipe_id=recipe.id,
    )
    return True


def replica_host_ports(spec: DeploymentSpec) -> dict[int, int]:
    """Container port -> the host port a new replica serves it on: a free one, told
    to it in $PORT, unless the command names the container port itself."""
    literal = spec.literal_container_ports()
    return {
        route.container_port: route.container_port
        if route.container_port in literal
        else free_port()
        for route in spec.routes
    }


async def start_replica(
    session: AsyncSession, recipe: RecipeModel, spec: DeploymentSpec, now: datetime
) -> RunModel:
    ports = replica_host_ports(spec)
    job = spec.replica_job(ports)
    if spec.extra_packages:
        job["start_script"] = with_packages(spec.start_script, spec.extra_packages)
    run = await create_run(session, recipe, trigger=DEPLOYMENT, actor=ACTOR, now=now, spec=job)
    run.recipe_version = recipe.version
    run.replica_ports = {str(k): v for k, v in ports.items()}
    if literal := sorted(spec.literal_container_ports()):
        record_event(
            session,
            kind="deployment",
            message=f"the command names container port(s) {', '.join(map(str, literal))} "
            "and no $PORT: the replica is reached there, so only one fits on a machine",
            actor=ACTOR,
            now=now,
            recipe_id=recipe.id,
            run_id=run.id,
        )
    return run


def not_ready_reason(replica: Replica, ready: set[str]) -> str | None:
    """Why a replica takes no traffic, in one line; None when it does."""
    if replica.run.id in ready:
        return None
    if replica.stopping:
        return "stopping"
    if not replica.running:
        return f"not running yet ({replica.run.status})"
    ports = replica.run.replica_ports or {}
    if not ports:
        return "it has no port to serve on"
    container, host = next(iter(ports.items()))
    where = f"{backend_address(replica.address or '')}:{host}"
    if int(host) == int(container):
        return f"nothing answers on {where} (the container port its command names)"
    return (
        f"nothing answers on {where}: the command must listen on $PORT (={host}) for "
        f"route container_port {container}, or name {container} in its command line"
    )


def balancer_config(
    recipe: RecipeModel,
    spec: DeploymentSpec,
    state: DeploymentStateModel,
    routed: Sequence[Replica],
    host: str,
) -> LoadBalancerConfig:
    """One listener per route, on the route's load balancer port, to the replicas
    now taking traffic."""
    listeners = []
    for route in spec.routes:
        backends = []
        for replica in routed:
            port = replica.port(route.container_port)
            if replica.address and port:
                backends.append(Backend(address=backend_address(replica.address), port=port))
        listeners.append(
            Listener(
                port=int(state.route_ports[str(route.container_port)]),
                host=host,
                backends=backends,
                algorithm=spec.algorithm,
                allow=route.allow,
                health_check=spec.health_check,
                hold_seconds=spec.replica_wait_seconds(),
            )
        )
    return LoadBalancerConfig(name=recipe.name, listeners=listeners)


def front_door_path(owner: str, name: str) -> str:
    """A deployment's canonical front door address (`server/frontdoor.py`): qualified
    by its owner, as names are unique only per owner. `~` starts no user, group or
    deployment name, so the owner can't be mistaken for a bare name."""
    return f"/d/~{owner}/{name}/"


def backend_address(address: str) -> str:
    """Nodes' addresses are IPs; `localhost` names this machine."""
    return "127.0.0.1" if address in ("localhost", "") else address


def deployment_view_state(
    state: DeploymentStateModel | None,
    replicas: Sequence[Replica],
    ready: set[str],
    lb: dict[str, Any],
    stopped: bool = False,
) -> dict[str, Any]:
    if stopped:
        status = "stopping" if replicas else "stopped"
    elif any(r.run.id in ready for r in replicas):
        status = "running"
    else:
        status = "pending"
    return {
        "status": status,
        "stopped": stopped,
        "desired_replicas": 0 if stopped else state.desired_replicas if state else None,
        "restarts": state.restarts if state else 0,
        "replicas": [
            {
                "run_id": r.run.id,
                "number": r.run.number,
                "status": r.run.status,
                "version": r.run.recipe_version,
                "address": r.address,
                "ports": r.run.replica_ports,
                "ready": r.run.id in ready,
                "not_ready_reason": not_ready_reason(r, ready),
                "stopping": r.stopping,
            }
            for r in replicas
        ],
        "route_ports": state.route_ports if state else {},
        "load_balancer": lb,
    }
