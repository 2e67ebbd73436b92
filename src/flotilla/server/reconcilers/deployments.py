"""Keeps every deployment's replicas running and its load balancer routing to the
ready ones.

Each step, per deployment: decide the replica count (autoscaling on the load
balancer's connections or the front door's requests per second, and scale from
zero when a client waits); start replicas up to it (a replica that exited is
replaced, with back-off when they keep exiting); probe new replicas and route to
them once their port answers; replace a replica whose health check took it
Offline; on a new recipe version, start new replicas and drain the old ones only
once as many new ones are ready (a rolling update); stop surplus replicas.
A replica leaving the load balancer (rollout, scale-down) is stopped once its
connections there have ended: at least DRAIN_MIN (1 s, for requests the front
door has in flight) and at most DRAIN_MAX (30 s) after it left. A stopped
deployment (`sc stop`, or created by `sc apply` without `--start`) has none.
A replica running NOT_READY_AFTER without answering gets one event saying why.

All deployments are decided in one transaction. One that fails (a stored spec
the recipe no longer accepts, say) fails only itself: the transaction is redone
without it, it gets an error event and backs off (`isolation.py`), and every
other deployment goes on. Its load balancer keeps what it was serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.core.replicas import ScalePolicy, ScaleState, decide_scale, restart_backoff
from flotilla.errors import ClientError
from flotilla.lb import LoadBalancerConfig
from flotilla.recipes.deployment import DeploymentSpec
from flotilla.recipes.types import DEPLOYMENT
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import DeploymentStateModel, RecipeModel
from flotilla.server.reconcilers.isolation import Quarantine, report_failures
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services.events import record_event
from flotilla.server.services.metering.budgets import check_new_run
from flotilla.server.services.runs.runs import request_stop
from flotilla.server.services.serving.deployments import (
    ACTOR,
    Replica,
    active_replicas,
    backend_address,
    balancer_config,
    deployment_state,
    is_stopped,
    live_deployments,
    not_ready_reason,
    recent_exits,
    spec_of,
    start_replica,
)
from flotilla.server.services.serving.load_balancers import plane_key

PROBE_TIMEOUT = 1.0
# A client waiting on a scaled-to-zero deployment keeps it wanted this long.
DEMAND_HOLD = 60.0
# A replica leaving the load balancer is stopped once its connections there end,
# but not before DRAIN_MIN (requests in flight through the front door are not
# counted there) and not after DRAIN_MAX.
DRAIN_MIN = 1.0
DRAIN_MAX = 30.0
NOT_READY_AFTER = timedelta(seconds=10)


class Deployments(ReconcileLoop):
    name = "deployments"
    watches = (Change.DEPLOYMENTS,)

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.changes, min(1.0, ctx.settings.resync_seconds))
        self.ctx = ctx
        self.ready = ctx.ready_replicas  # replica runs whose port has answered
        # Replicas taken out of the load balancer, and when (monotonic seconds).
        self.unrouted: dict[str, float] = {}
        self.demanded: set[str] = set()  # deployments a held TCP connection waits on
        self.changed = False  # this step started or stopped replicas
        self.refused: dict[str, str] = {}  # deployment -> why a budget refuses replicas
        self.told_not_ready: set[str] = set()  # replicas whose not-ready event is out
        self.quarantine = Quarantine(self.name)

    async def step(self) -> None:
        # Probing is network work: done before the transaction, never inside it.
        async with self.ctx.sessions() as session:
            replicas = [
                replica
                for recipe in await live_deployments(session)
                for replica in await active_replicas(session, recipe)
            ]
        await self._probe(replicas)
        active = {r.run.id for r in replicas}
        self.unrouted = {run: at for run, at in self.unrouted.items() if run in active}
        self.told_not_ready &= active
        self.changed = False
        now = self.ctx.clock.now()
        memory = self._memory()
        live: list[str] = []
        held: set[str] = set()

        async def decide_all() -> dict[str, tuple[LoadBalancerConfig, str]]:
            self._restore(memory)  # a redone attempt starts from the same memory
            live.clear()
            held.clear()
            configs: dict[str, tuple[LoadBalancerConfig, str]] = {}
            async with self.ctx.transaction() as session:
                for recipe in await live_deployments(session):
                    live.append(recipe.id)
                    if self.quarantine.holds(recipe.id, recipe.version):
                        held.add(plane_key(recipe))
                        continue
                    with self.quarantine.blame(recipe.id, recipe.version):
                        config = await self._reconcile(session, recipe, now)
                    configs[plane_key(recipe)] = (config, recipe.id)
            return configs

        configs, failures = await self.quarantine.rerun(decide_all)
        await report_failures(self.ctx, failures, ACTOR)
        for _, recipe_id in configs.values():
            self.quarantine.succeeded(recipe_id)
        self.quarantine.keep_only(live)
        # The load balancers follow what was committed.
        plane = self.ctx.lb_plane
        for key, (config, recipe_id) in configs.items():
            await plane.put(key, config, on_demand=functools.partial(self._demand, recipe_id))
        for key in plane.running_keys():
            if key.startswith(f"{DEPLOYMENT}:") and key not in configs and key not in held:
                await plane.remove(key)
        if self.changed:  # replicas to place or to stop
            self.ctx.changes.announce(Change.RUNS_QUEUED, Change.STOPS_REQUESTED)

    def _memory(self) -> _Memory:
        return (
            set(self.ready),
            dict(self.unrouted),
            set(self.demanded),
            dict(self.refused),
            set(self.told_not_ready),
        )

    def _restore(self, memory: _Memory) -> None:
        ready, unrouted, demanded, refused, told = memory
        self.ready.clear()
        self.ready.update(ready)  # shared with the front door: the same set, refilled
        self.unrouted, self.refused = dict(unrouted), dict(refused)
        self.told_not_ready = set(told)
        self.demanded |= demanded  # kept: demand that came in during the attempt

    async def _reconcile(
        self, session: AsyncSession, recipe: RecipeModel, now: datetime
    ) -> LoadBalancerConfig:
        """Decide one deployment's replicas; returns its load balancer's config."""
        spec = spec_of(recipe)
        state = await deployment_state(session, recipe, spec)
        replicas = [r for r in await active_replicas(session, recipe) if not r.stopping]
        key = plane_key(recipe)
        if await is_stopped(session, recipe.id):
            self._retire(session, key, replicas, now)
            return balancer_config(recipe, spec, state, [], self.ctx.settings.host)
        self._scale(recipe, spec, state, now)
        current = [r for r in replicas if r.run.recipe_version == recipe.version]
        old = [r for r in replicas if r.run.recipe_version != recipe.version]
        current = self._replace_unhealthy(session, key, current, now)
        # Ready replicas first, oldest first: a scale-down stops the others.
        current.sort(key=lambda r: (r.run.id not in self.ready, r.run.number))
        surplus = current[state.desired_replicas :]
        current = current[: state.desired_replicas]
        await self._fill(session, recipe, spec, state, current, now)
        ready_current = [r for r in current if r.run.id in self.ready]
        # Old replicas keep serving until as many new ones are ready.
        rolled = len(ready_current) >= min(state.desired_replicas, len(old))
        routed = ready_current + ([] if rolled else [r for r in old if r.run.id in self.ready])
        self._retire(session, key, surplus + (old if rolled else []), now)
        self._tell_not_ready(session, recipe, current, now)
        return balancer_config(recipe, spec, state, routed, self.ctx.settings.host)

    def _tell_not_ready(
        self, session: AsyncSession, recipe: RecipeModel, replicas: list[Replica], now: datetime
    ) -> None:
        """One event for each replica running NOT_READY_AFTER without answering."""
        for replica in replicas:
            started = replica.run.started_at
            if (
                not replica.running
                or replica.run.id in self.ready
                or replica.run.id in self.told_not_ready
                or started is None
                or now - _aware(started, now) < NOT_READY_AFTER
            ):
                continue
            self.told_not_ready.add(replica.run.id)
            record_event(
                session,
                kind="deployment",
                message=f"replica {replica.run.number} is not ready: "
                f"{not_ready_reason(replica, self.ready)}",
                actor=ACTOR,
                now=now,
                recipe_id=recipe.id,
                run_id=replica.run.id,
            )

    def _demand(self, recipe_id: str) -> None:
        """A connection waits at the load balancer for a replica: scale from zero."""
        self.demanded.add(recipe_id)
        self.wake.set()

    def _scale(
        self,
        recipe: RecipeModel,
        spec: DeploymentSpec,
        state: DeploymentStateModel,
        now: datetime,
    ) -> None:
        low, high = spec.replica_range()
        auto = spec.autoscale
        target = None
        if auto is not None:
            target = auto.target_connections or auto.target_rps
        up, down = auto.delays() if auto is not None else (0.0, 0.0)
        policy = ScalePolicy(low, high, target, up, down)
        load = self._load(recipe, spec)
        if recipe.id in self.demanded:
            self.demanded.discard(recipe.id)
            state.demand_at = now
        demand = state.demand_at is not None and (now - state.demand_at).total_seconds() < (
            DEMAND_HOLD
        )
        decided = decide_scale(
            policy,
            ScaleState(state.desired_replicas, state.above_since, state.below_since),
            load,
            demand,
            now,
        )
        if decided.desired != state.desired_replicas:
            state.last_scaled_at = now
        state.desired_replicas = decided.desired
        state.above_since, state.below_since = decided.above_since, decided.below_since
        if decided.desired > 0:
            state.demand_at = None

    def _load(self, recipe: RecipeModel, spec: DeploymentSpec) -> float:
        auto = spec.autoscale
        if auto is None:
            return 0.0
        if auto.target_rps is not None:
            return self.ctx.request_meter.rate(recipe.id)
        # Connections straight to the load balancer, plus requests through the
        # front door (which routes to the replicas itself).
        in_flight = self.ctx.request_meter.in_flight(recipe.id)
        snapshot = self.ctx.lb_plane.snapshot(plane_key(recipe))
        if snapshot is None:
            return float(in_flight)
        direct = sum(listener["active_connections"] for listener in snapshot["listeners"])
        return float(direct + in_flight)

    async def _probe(self, replicas: list[Replica]) -> None:
        """Ready = the replica's first port accepts a TCP connection. `replicas` are
        all the active ones: readiness of the others is forgotten."""
        live = {r.run.id for r in replicas if not r.stopping}
        self.ready.intersection_update(live)
        pending = [r for r in replicas if r.running and r.run.id not in self.ready]
        results = await asyncio.gather(*(_answers(r) for r in pending))
        self.ready.update(r.run.id for r, ok in zip(pending, results, strict=True) if ok)

    def _replace_unhealthy(
        self, session: AsyncSession, key: str, replicas: list[Replica], now: datetime
    ) -> list[Replica]:
        """Stop ready replicas the load balancer's health check took Offline; the
        fill that follows starts their replacements."""
        snapshot = self.ctx.lb_plane.snapshot(key)
        if snapshot is None:
            return replicas
        offline = {
            backend["key"]
            for listener in snapshot["listeners"]
            for backend in listener["backends"]
            if backend["state"] == "offline"
        }
        keep = []
        for replica in replicas:
            ports = (replica.run.replica_ports or {}).values()
            backends = {f"{replica.address}:{p}" for p in ports}
            if replica.run.id in self.ready and backends & offline:
                self.changed = True
                request_stop(
                    session,
                    replica.run,
                    reason="failed its health check; replaced",
                    actor=ACTOR,
                    now=now,
                )
                self.ready.discard(replica.run.id)
            else:
                keep.append(replica)
        return keep

    async def _fill(
        self,
        session: AsyncSession,
        recipe: RecipeModel,
        spec: DeploymentSpec,
        state: DeploymentStateModel,
        current: list[Replica],
        now: datetime,
    ) -> None:
        missing = state.desired_replicas - len(current)
        if missing <= 0:
            return
        exits = await recent_exits(session, recipe, now)
        # The back-off counts from the last exit (as Kubernetes' does), not from
        # the last restart: a replica slow to start and fail must not eat its wait.
        if exits and (now - exits[-1]).total_seconds() < restart_backoff(len(exits)):
            return
        try:
            # A replica is a new run: the owner's budgets apply (running ones stay).
            await check_new_run(session, recipe, recipe.owner, now)
        except ClientError as refused:
            if self.refused.get(recipe.id) != refused.message:  # said once, not every step
                self.refused[recipe.id] = refused.message
                record_event(
                    session,
                    kind="deployment",
                    message=f"no new replica: {refused.message}",
                    actor=ACTOR,
                    now=now,
                    recipe_id=recipe.id,
                )
            return
        self.refused.pop(recipe.id, None)
        self.changed = True
        for _ in range(missing):
            current.append(Replica(await start_replica(session, recipe, spec, now), None))
        if exits:
            state.restarts += missing
            state.last_restart_at = now

    def _retire(
        self, session: AsyncSession, key: str, leaving: list[Replica], now: datetime
    ) -> None:
        """Take leaving replicas out of the load balancer, and stop each once its
        connections there have ended (at least DRAIN_MIN after, for requests the
        front door has in flight; at most DRAIN_MAX)."""
        busy = self._busy_backends(key)
        clock = time.monotonic()
        for replica in leaving:
            since = self.unrouted.setdefault(replica.run.id, clock)
            drained = replica.address is None or not any(
                (backend_address(replica.address), port) in busy
                for port in (replica.run.replica_ports or {}).values()
            )
            waited = clock - since
            if replica.run.id not in self.ready or (
                waited >= DRAIN_MAX or (waited >= DRAIN_MIN and drained)
            ):
                self.changed = True
                request_stop(
                    session, replica.run, reason="replica no longer needed", actor=ACTOR, now=now
                )
                self.unrouted.pop(replica.run.id, None)
                self.ready.discard(replica.run.id)

    def _busy_backends(self, key: str) -> set[tuple[str, int]]:
        """The backends (address, port) with connections open through the load balancer."""
        snapshot = self.ctx.lb_plane.snapshot(key)
        if snapshot is None:
            return set()
        return {
            (backend["address"], int(backend["port"]))
            for listener in snapshot["listeners"]
            for backend in listener["backends"]
            if backend["active_connections"]
        }


_Memory = tuple[set[str], dict[str, float], set[str], dict[str, str], set[str]]


def _aware(value: datetime, like: datetime) -> datetime:
    """SQLite gives back naive UTC datetimes."""
    return value.replace(tzinfo=like.tzinfo) if value.tzinfo is None else value


async def _answers(replica: Replica) -> bool:
    ports = list((replica.run.replica_ports or {}).values())
    if not replica.address or not ports:
        return False
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(replica.address, int(ports[0])), PROBE_TIMEOUT
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
