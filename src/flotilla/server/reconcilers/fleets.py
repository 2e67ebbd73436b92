"""The fleet reconciler: keeps every fleet at its desired size.

Each step: poll every provider and apply what happened to the node rows (ready,
failed, a GPU failed, spot notice, gone); load the fleets, their nodes and the
pending queue (`services.fleets.load_fleets`); decide (`services.fleet_plan`,
pure); apply — create instances, release idle, failed and orphaned nodes, drain
the busy nodes of deleted fleets. Provider calls happen outside any database
transaction; each outcome is recorded in its own short one.

One fleet whose stored spec no longer validates is left out of the plan, nodes
and all, with an error event (once per message); one whose
provider call fails unexpectedly backs off like a refused request. Every other
fleet goes on.

Woken when fleet recipes or nodes change, or when the scheduler announces runs
that wait for capacity (`watches`), and every `resync_seconds` otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.provider import CapacityError, Instance, ProviderError, ProviderEvent
from flotilla.core.autoscale import format_seconds
from flotilla.core.backoff import doubling
from flotilla.core.status import NodeState
from flotilla.errors import TemporaryError
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import NodeModel, RecipeModel
from flotilla.server.reconcilers.isolation import describe
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services import backoffs
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.fleet_nodes import (
    ACTOR,
    apply_provider_events,
    record_instances,
    release_node,
    update_idle,
)
from flotilla.server.services.fleets.fleet_plan import Plan, Provision, Release, decide
from flotilla.server.services.fleets.fleets import (
    FLEET_ERROR,
    FLEET_OK,
    FLEET_WAITING,
    SCALING_DOWN,
    FleetSnapshot,
    busy_nodes,
    fleet_reasons,
    load_fleets,
)
from flotilla.server.services.fleets.nodes import switch_node_state

log = logging.getLogger("flotilla.fleets")
# A request the provider refused as made is tried again after this long, or at
# once when the fleet's recipe changes.
ERROR_RETRY_SECONDS = 300.0
# After a node fails before it ever became ready, its replacement waits 10 s, then
# 20, 40 … up to 10 minutes while replacements keep failing that way: an instance
# type or image that cannot boot must not be created (and billed) in a tight loop.
BOOT_FAILURE_BACKOFF = 10.0
MAX_BOOT_FAILURE_BACKOFF = 600.0


class Fleets(ReconcileLoop):
    name = "fleets"
    watches = (Change.FLEETS, Change.CAPACITY_WANTED, Change.NODES_CHANGED)

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.changes, ctx.settings.resync_seconds, min_gap=0.05)
        self.ctx = ctx
        # Polled events not yet recorded: polling consumes them, so they are kept
        # until the transaction that applies them commits.
        self._events: list[tuple[str, ProviderEvent]] = []
        self._broken: dict[str, str] = {}  # fleet id -> why its stored spec is invalid

    async def step(self) -> None:
        changed = await self._provider_events()
        now = self.ctx.clock.now()
        async with self.ctx.transaction() as session:
            snapshot = await load_fleets(session, self.ctx.providers, planning=True)
            await self._count_boot_failures(session, snapshot, now)
            self._report_broken(session, snapshot, now)
            holding = await _backing_off(session, snapshot, now)
        changed |= await self._apply(decide(snapshot, now, holding), now)
        if changed:
            self.ctx.changes.announce(Change.NODES_CHANGED)

    def _report_broken(self, session: AsyncSession, snapshot: FleetSnapshot, now: datetime) -> None:
        """An error event for each fleet left out of the plan, once per message."""
        for fleet_id, why in snapshot.broken.items():
            if self._broken.get(fleet_id) != why:
                message = f"fleet left alone, its stored spec is invalid: {why}"
                log.warning("fleet %s: %s", fleet_id, message)
                _fleet_event(session, fleet_id, FLEET_ERROR, message, now)
        self._broken = dict(snapshot.broken)

    async def _count_boot_failures(
        self, session: AsyncSession, snapshot: FleetSnapshot, now: datetime
    ) -> None:
        """Back off replacing nodes that fail before they are ever ready; a node that
        becomes ready after the last such failure ends the back-off. The count and
        when the last failure was counted are a `backoffs` row and each node's
        `failed_at`, so a restarted server neither forgets nor counts a node twice."""
        for fleet in snapshot.fleets:
            key = _boot_key(fleet.recipe.id)
            row = await backoffs.current(session, key)
            last = row.last_failure_at if row is not None else None
            if last is not None and any(
                n.ready_at is not None and n.ready_at >= last for n in fleet.members
            ):
                await backoffs.succeeded(session, key)
                row, last = None, None
            new = [
                n
                for n in fleet.members
                if n.state == NodeState.FAILED
                and n.ready_at is None
                and n.failed_at is not None
                and (last is None or n.failed_at > last)
            ]
            for node in new:
                await self._boot_failed(session, fleet.recipe, node, now)

    async def _boot_failed(
        self, session: AsyncSession, fleet: RecipeModel, node: NodeModel, now: datetime
    ) -> None:
        row = await backoffs.current(session, _boot_key(fleet.id))
        count = (row.failures if row is not None else 0) + 1
        delay = doubling(BOOT_FAILURE_BACKOFF, count, MAX_BOOT_FAILURE_BACKOFF)
        await backoffs.failed(session, _boot_key(fleet.id), now, _fixed(delay))
        await backoffs.failed(session, _key(fleet.id), now, _fixed(delay), fleet.version)
        message = (
            f"{count} node(s) in a row failed before becoming ready "
            f"({node.reason}); next replacement in {format_seconds(delay)}"
        )
        _fleet_event(session, fleet.id, FLEET_WAITING, message, now)

    async def _provider_events(self) -> bool:
        now = self.ctx.clock.now()
        for name, provider in self.ctx.providers.items():
            self._events += [(name, event) for event in provider.poll(now)]
        if not self._events:
            return False
        async with self.ctx.transaction() as session:
            changed = await apply_provider_events(session, self._events, now)
        self._events = []
        return changed

    async def _apply(self, plan: Plan, now: datetime) -> bool:
        async with self.ctx.transaction() as session:
            await update_idle(session, plan.idle)
            for fleet_id, kind, message in plan.status:
                _fleet_event(session, fleet_id, kind, message, now)
            changed = await self._drain(session, plan.drain, now)
        for request in plan.provision:
            await self._provision(request, now)
        for release in plan.release:
            changed |= await self._release(release, now)
        return changed

    async def _drain(self, session: AsyncSession, drains: list[Release], now: datetime) -> bool:
        changed = False
        for item in drains:
            node = await session.get(NodeModel, item.node_id)
            if node is not None and node.state in (NodeState.READY, NodeState.CORDONED):
                changed |= switch_node_state(
                    session, node, NodeState.DRAINING, reason=item.reason, actor=ACTOR, now=now
                )
        return changed

    async def _provision(self, request: Provision, now: datetime) -> None:
        provider = self.ctx.providers[request.provider]  # the plan only uses known ones
        instances: list[Instance] = []
        failure: tuple[str, str, float] | None = None
        try:
            instances = provider.create_instances(
                request.request_id,
                request.instance_type,
                request.region,
                request.count,
                request.spot,
                request.cluster,
                now,
            )
        except CapacityError as e:  # a stock-out, no partition with room
            failure = (FLEET_WAITING, f"waiting for capacity: {e}", e.retry_after)
        except ProviderError as e:
            failure = (FLEET_ERROR, f"{request.provider} refused: {e}", ERROR_RETRY_SECONDS)
        except TemporaryError as e:
            failure = (FLEET_WAITING, f"{request.provider} unavailable: {e}", e.retry_after)
        except Exception as e:  # a provider's bug fails this request, not every fleet's
            failure = (
                FLEET_ERROR,
                f"{request.provider} failed: {describe(e)}",
                ERROR_RETRY_SECONDS,
            )
        async with self.ctx.transaction() as session:
            fleet = await session.get(RecipeModel, request.fleet_id)
            assert fleet is not None
            # Past this request whatever its outcome: the next one has new arguments.
            fleet.run_counter = max(fleet.run_counter, request.sequence)
            if failure is not None:
                kind, why, retry = failure
                message = f"{why}; retrying in {format_seconds(retry)}"
                reasons = await fleet_reasons(session, [fleet.id])
                if reasons.get(fleet.id) != (kind, message):
                    _fleet_event(session, fleet.id, kind, message, now)
                await backoffs.failed(session, _key(fleet.id), now, _fixed(retry), request.version)
                return
            nodes = await record_instances(
                session,
                instances,
                provider=request.provider,
                fleet_id=fleet.id,
                request_id=request.request_id,
                now=now,
            )
            message = (
                f"provisioning {len(nodes)} {request.instance_type} node(s) in {request.region}"
                f" (request {request.request_id})"
            )
            _fleet_event(session, fleet.id, FLEET_OK, message, now)
            await backoffs.succeeded(session, _key(fleet.id))

    async def _release(self, release: Release, now: datetime) -> bool:
        """Cordon (so no work lands on it), terminate at the provider, then mark
        terminated. A node that took work since the decision is left alone."""
        async with self.ctx.transaction() as session:
            node = await session.get(NodeModel, release.node_id, with_for_update=True)
            if node is None or NodeState(node.state).is_gone():
                return False
            failed = node.state == NodeState.FAILED
            if not failed and await busy_nodes(session, node.name):
                return False
            if node.state == NodeState.READY:
                switch_node_state(
                    session,
                    node,
                    NodeState.CORDONED,
                    reason=f"{SCALING_DOWN}: {release.reason}",
                    actor=ACTOR,
                    now=now,
                )
            provider_name, instance_id = node.provider, node.instance_id
        provider = self.ctx.providers.get(provider_name)
        if provider is None:
            log.warning("node %s: provider %s is not configured", release.node_id, provider_name)
            return False
        if instance_id:
            try:
                provider.terminate(instance_id, now)  # idempotent: a retry is harmless
            except (ProviderError, TemporaryError) as e:
                log.warning("terminating %s failed (retried next step): %s", instance_id, e)
                return True
        async with self.ctx.transaction() as session:
            node = await session.get(NodeModel, release.node_id)
            if node is not None and not NodeState(node.state).is_gone():
                release_node(session, node, release.reason, now)
        return True


def _fleet_event(
    session: AsyncSession, fleet_id: str, kind: str, message: str, now: datetime
) -> None:
    record_event(session, kind=kind, message=message, actor=ACTOR, now=now, recipe_id=fleet_id)


def _key(fleet_id: str) -> str:
    return f"fleet-request:{fleet_id}"


def _boot_key(fleet_id: str) -> str:
    """The fleet's nodes that failed before they were ever ready, in a row."""
    return f"fleet-boot:{fleet_id}"


async def _backing_off(session: AsyncSession, snapshot: FleetSnapshot, now: datetime) -> set[str]:
    """Fleets whose last request failed and whose retry time has not come, unless
    their recipe changed since (a new recipe deserves a new try). Kept in the
    database (`services/backoffs.py`): a restart waits too."""
    by_key = {_key(f.recipe.id): f.recipe for f in snapshot.fleets}
    held = await backoffs.waiting(session, by_key, now)
    return {by_key[k].id for k, row in held.items() if row.version == by_key[k].version}


def _fixed(seconds: float) -> Callable[[int], float]:
    """A wait that does not grow with the failures in a row (the caller's)."""
    return lambda _: seconds
