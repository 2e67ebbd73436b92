"""The node reconciler for hosts with an agent of their own (joined, or enrolled by
an SSH fleet): keeps the router's connections in step with the node rows, asks each
agent for a heartbeat, and turns what it hears (or does not) into node states.

Every `node_heartbeat_seconds`:
- each live row with an agent endpoint is attached to the router (`NodeRouter`);
  rows gone are detached;
- each agent is asked `hello` (at most 5 s). An answer brings a `provisioning` node
  to `ready` with the inventory it reports, an `unreachable` one back to where it
  was, and a `failed` one to `provisioning` again (below);
- silence for `node_unreachable_seconds` makes a node `unreachable` (no new work;
  its tasks keep their last known state: a network blip loses nothing), and for
  `node_failed_seconds` `failed`: its runs are evicted in the same transaction and
  its tasks counted lost, so the runs are requeued on other nodes;
- fencing: every answering agent is asked which of its tasks still run, and any
  that the control plane does not expect there (a failed node's, whose runs were
  requeued elsewhere) is stopped. Nothing runs twice once a node answers again;
- a node whose certificate has a third of its life left gets a new one over the
  link (`services/fleets/node_certs.py`), an event saying until when.

Provider calls and agent calls happen outside any transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from flotilla.compute.agents.remote import RemoteNode
from flotilla.compute.agents.router import NodeRouter
from flotilla.core.status import NodeState
from flotilla.errors import TemporaryError
from flotilla.runtime.tls import TlsFiles, fingerprint, load_cert
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import NodeModel
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.reconcilers.recovery import evict
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.agent_nodes import (
    AGENT_LABEL,
    AGENT_PROVIDERS,
    active_tasks_on,
    agent_nodes,
    apply_inventory,
    runs_on,
    runs_on_gpu,
)
from flotilla.server.services.fleets.agents import control_plane_tls
from flotilla.server.services.fleets.node_certs import NodeCertificates
from flotilla.server.services.fleets.nodes import switch_node_state
from flotilla.server.services.runs.launch import task_ref

log = logging.getLogger("flotilla.nodes")
ACTOR = "nodes"
BEFORE_UNREACHABLE = "state_before_unreachable"
TLS_CHECK = timedelta(hours=1)


class AgentNodes(ReconcileLoop):
    name = "agent-nodes"

    def __init__(self, ctx: ServerContext, router: NodeRouter) -> None:
        super().__init__(ctx.changes, ctx.settings.node_heartbeat_seconds)
        self.ctx = ctx
        self.router = router
        self._tls: TlsFiles | None = None
        self._tls_checked = datetime.min.replace(tzinfo=UTC)
        self._tls_version = ""
        self._attached_at: dict[str, float] = {}  # silence of a node never heard from
        self.certs = NodeCertificates(ctx)

    async def attach_all(self) -> None:
        """Attach every live agent node (at start, before supervision's first step,
        so that no remote task is taken for one the local agent lost)."""
        async with self.ctx.sessions() as session:
            rows = await agent_nodes(session)
            await self._sync(session, rows)
        # One heartbeat each now: the first supervision step then reads their tasks.
        await asyncio.gather(*(self._beat(node) for node in self.router.remote.values()))

    async def step(self) -> None:
        async with self.ctx.sessions() as session:
            rows = await agent_nodes(session)
            await self._sync(session, rows)
        names = [r.name for r in rows if r.name in self.router.remote]
        answers = await asyncio.gather(*(self._beat(self.router.remote[n]) for n in names))
        heard = {n: a for n, a in zip(names, answers, strict=True) if a is not None}
        counts = await asyncio.gather(*(self._fence(self.router.remote[n], rows) for n in heard))
        fenced = dict(zip(heard, counts, strict=True))
        now = _now(self)
        due = [self.router.remote[n] for n in heard if self.certs.due(self.router.remote[n], now)]
        renewed = await asyncio.gather(*(self.certs.renew(node, now) for node in due))
        changed = False
        async with self.ctx.transaction() as session:
            for node_, message in zip(due, renewed, strict=True):
                if message is not None:
                    row = next(r for r in rows if r.name == node_.name)
                    record_event(
                        session,
                        kind="node",
                        message=message,
                        actor=ACTOR,
                        now=now,
                        node_id=row.id,
                        recipe_id=row.fleet_id,
                    )
            for name in names:
                node = await session.get(NodeModel, next(r.id for r in rows if r.name == name))
                if node is None or NodeState(node.state).is_gone():
                    continue
                if name in heard:
                    changed |= await self._heard(session, node, heard[name], fenced[name])
                else:
                    changed |= await self._silent(session, node)
        if changed:
            self.ctx.changes.announce(Change.NODES_CHANGED)

    async def _sync(self, session: AsyncSession, rows: Any) -> None:
        live = set()
        for row in rows:
            endpoint = row.labels.get(AGENT_LABEL)
            if not endpoint:
                continue
            live.add(row.name)
            tls, version = await self._control_plane_tls(session)
            self.router.attach(row.name, endpoint, tls, version)
            self._attached_at.setdefault(row.name, time.monotonic())
            if row.state == NodeState.FAILED.value:
                self.router.mark_failed(row.name, row.reason or "node failed")
        for name in set(self.router.remote) - live:
            await self.router.detach(name)
            self._attached_at.pop(name, None)

    async def _control_plane_tls(self, session: AsyncSession) -> tuple[TlsFiles, str]:
        """The control plane's client certificate, checked once an hour (renewed
        with a third of its life left: `services/agents.control_plane_tls`), and
        its fingerprint: connections are made anew when it changed."""
        now = _now(self)
        if self._tls is None or now - self._tls_checked >= TLS_CHECK:
            pki = self.ctx.settings.data_dir / "pki"
            self._tls = await control_plane_tls(session, self.ctx.secret_box, pki, now)
            await session.commit()
            self._tls_checked = now
            self._tls_version = fingerprint(load_cert(self._tls.cert.read_bytes()))
        return self._tls, self._tls_version

    async def _beat(self, node: RemoteNode) -> dict[str, Any] | None:
        try:
            return await node.beat()
        except TemporaryError as e:
            log.info("%s", e)
            return None

    async def _fence(self, node: RemoteNode, rows: Any) -> int | None:
        """Stop what runs on `node` that the control plane does not expect there;
        how many, or None when the agent could not say what runs (then the node is
        not admitted: fencing fails closed). Read the agent first, the database
        second: a task launched in between was committed before its launch, so it
        is expected."""
        try:
            live = await node.live_task_dirs()
        except TemporaryError as e:
            log.warning("node %s: cannot list its tasks, so it is not admitted: %s", node.name, e)
            return None
        if not live:
            return 0
        row = next(r for r in rows if r.name == node.name)
        expected: set[str] = set()
        if row.state != NodeState.FAILED.value:
            async with self.ctx.sessions() as session:
                tasks = await active_tasks_on(session, node.name)
            expected = {node.task_dir(task_ref(t)) for t in tasks}
        stray = [d for d in live if d not in expected]
        for task_dir in stray:
            log.warning("node %s: stopping %s: not expected there", node.name, task_dir)
            try:
                await node.stop_dir(task_dir)
            except TemporaryError as e:
                log.warning("node %s: could not stop %s: %s", node.name, task_dir, e)
        return len(stray)

    async def _heard(
        self, session: AsyncSession, node: NodeModel, hello: dict[str, Any], fenced: int | None
    ) -> bool:
        now = _now(self)
        state = NodeState(node.state)
        before = dict(node.labels)
        failed_gpus = apply_inventory(node, hello, self.ctx.settings.run_as_user)
        changed = node.labels != before or bool(failed_gpus)
        for index, why in failed_gpus.items():
            record_event(
                session,
                kind="node",
                message=f"{node.name}: GPU {index} unhealthy: {why}",
                actor=ACTOR,
                now=now,
                node_id=node.id,
                recipe_id=node.fleet_id,
            )
            for run in await runs_on_gpu(session, node.name, index):
                evict(session, run, f"GPU {index} of node {node.name} is unhealthy: {why}", now)
        version = hello.get("version", "?")
        if state == NodeState.PROVISIONING and fenced == 0:
            self.router.mark_back(node.name)
            isolation = node.labels.get("isolation", "unknown")
            why = f"agent {version} answered (isolation: {isolation})"
            return (
                switch_node_state(session, node, NodeState.READY, reason=why, actor=ACTOR, now=now)
                or changed
            )
        if state == NodeState.UNREACHABLE:
            back = NodeState(node.labels.get(BEFORE_UNREACHABLE) or NodeState.READY.value)
            node.labels = {k: v for k, v in node.labels.items() if k != BEFORE_UNREACHABLE}
            return switch_node_state(
                session, node, back, reason="its agent answers again", actor=ACTOR, now=now
            )
        if state == NodeState.FAILED and node.provider in AGENT_PROVIDERS and fenced is not None:
            # (A failed cloud instance, `sim` included, is released by its fleet.)
            why = f"its agent answers again; {fenced} task(s) it still ran were stopped"
            return switch_node_state(
                session, node, NodeState.PROVISIONING, reason=why, actor=ACTOR, now=now
            )
        return changed

    async def _silent(self, session: AsyncSession, node: NodeModel) -> bool:
        now = _now(self)
        remote = self.router.remote[node.name]
        silent = remote.silent_for()
        if silent is None:
            silent = time.monotonic() - self._attached_at.get(node.name, time.monotonic())
        state = NodeState(node.state)
        error = remote.last_error or "no answer"
        settings = self.ctx.settings
        if state == NodeState.PROVISIONING:
            why = f"waiting for its agent at {remote.address}: {error}"
            if node.reason != why:
                node.reason = why
                return True
            return False
        if state in (NodeState.READY, NodeState.CORDONED, NodeState.DRAINING):
            if silent < settings.node_unreachable_seconds:
                return False
            node.labels = {**node.labels, BEFORE_UNREACHABLE: state.value}
            why = f"no heartbeat for {silent:.0f} s ({error})"
            return switch_node_state(
                session, node, NodeState.UNREACHABLE, reason=why, actor=ACTOR, now=now
            )
        if state == NodeState.UNREACHABLE and silent >= settings.node_failed_seconds:
            why = f"no heartbeat for {silent:.0f} s ({error})"
            switch_node_state(session, node, NodeState.FAILED, reason=why, actor=ACTOR, now=now)
            for run in await runs_on(session, node.name):
                evict(session, run, f"node {node.name} failed: {why}", now)
            self.router.mark_failed(node.name, f"node {node.name} failed: {why}")
            return True
        return False


def _now(loop: AgentNodes) -> datetime:
    return loop.ctx.clock.now()
