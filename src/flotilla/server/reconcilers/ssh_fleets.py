"""The SSH fleet reconciler: every host listed in a `provider: ssh` fleet is a node.

Each step (every resync interval): a listed host without a live node is enrolled
(`compute/ssh/enroll.py`: SSH login with the fleet's key secret, host checks, the
agent installed at this version, its certificate, the agent started), one
enrollment per host at a time, outside any transaction, and registered as a
`provisioning` node; the node reconciler (`agent_nodes.py`) makes it `ready` when
its agent answers. A failed enrollment is a fleet event, retried after 10 s, then
20, 40 … up to 5 minutes (the wait kept in the database: `services/backoffs.py`).
A node whose host is no longer listed (or whose fleet was deleted) is drained
first — its runs requeued elsewhere — then terminated. The agent stays installed
on the host.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flotilla import __version__
from flotilla.compute.ssh.enroll import AgentInstall, Enrolled, EnrollFailed, SshTarget, enroll
from flotilla.core.backoff import doubling
from flotilla.core.status import NodeState
from flotilla.recipes.fleet import SSH, FleetSpec, SshHost
from flotilla.recipes.job import SecretRef
from flotilla.recipes.types import FLEET
from flotilla.runtime.tls import cert_pem, key_pem, make_csr, new_key
from flotilla.server.changes import Change
from flotilla.server.context import ServerContext
from flotilla.server.db.models import NodeModel, RecipeModel
from flotilla.server.pki import issue_node_cert
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services import backoffs
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.agent_nodes import register_agent_node
from flotilla.server.services.fleets.agents import load_ca
from flotilla.server.services.fleets.fleets import FLEET_ERROR, FLEET_OK, busy_nodes
from flotilla.server.services.fleets.nodes import switch_node_state
from flotilla.server.services.identity.secrets import attached_secret

log = logging.getLogger("flotilla.ssh_fleets")
ACTOR = "ssh-fleets"
RETRY_FIRST, RETRY_MAX = 10.0, 300.0


@dataclass(frozen=True)
class Listed:
    fleet: RecipeModel
    spec: FleetSpec
    host: SshHost


class SshFleets(ReconcileLoop):
    name = "ssh-fleets"
    watches = (Change.FLEETS,)

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.changes, ctx.settings.resync_seconds)
        self.ctx = ctx
        self._enrolling: dict[str, asyncio.Task[None]] = {}

    async def stop(self, grace: float = 10.0) -> None:
        for task in self._enrolling.values():
            task.cancel()
        await super().stop(grace)

    async def step(self) -> None:
        async with self.ctx.sessions() as session:
            listed = await self._listed(session)
            nodes = await _ssh_nodes(session)
            keys = [_key(name) for name in listed]
            held = await backoffs.waiting(session, keys, self.ctx.clock.now())
        live = {n.name: n for n in nodes}
        for name, item in listed.items():
            node = live.get(name)
            # A failed host (rebooted: its agent gone) is enrolled again: its agent
            # restarted, the node admitted once what still ran there is stopped.
            if (node is not None and node.state != NodeState.FAILED.value) or (
                name in self._enrolling
            ):
                continue
            if _key(name) not in held:
                self._enrolling[name] = asyncio.create_task(self._enroll_once(name, item))
        gone = [n for n in nodes if n.name not in listed]
        if gone:
            async with self.ctx.transaction() as session:
                for stale in gone:  # loaded by the session above: read again in this one
                    node = await session.get(NodeModel, stale.id, with_for_update=True)
                    if node is not None:
                        await self._remove(session, node)

    async def _listed(self, session: AsyncSession) -> dict[str, Listed]:
        query = select(RecipeModel).where(
            RecipeModel.type == FLEET, RecipeModel.deleted_at.is_(None)
        )
        out: dict[str, Listed] = {}
        for recipe in (await session.execute(query)).scalars():
            if recipe.spec.get("provider") != SSH:
                continue
            spec = FleetSpec.model_validate(recipe.spec)
            for host in spec.hosts:
                out[host.node_name(spec.name)] = Listed(recipe, spec, host)
        return out

    async def _enroll_once(self, name: str, item: Listed) -> None:
        try:
            await self._enroll(name, item)
        except Exception:  # a bug fails this host's try, never the loop
            log.exception("enrolling %s failed", name)
            await self._failed(name, item, "internal error (see the server log)")
        finally:
            self._enrolling.pop(name, None)

    async def _enroll(self, name: str, item: Listed) -> None:
        host, spec, now = item.host, item.spec, self.ctx.clock.now()
        try:
            async with self.ctx.transaction() as session:
                if await _taken(session, name, item.fleet.id):
                    raise EnrollFailed(f"node name {name} is taken by another node; name it")
                ref = SecretRef(name=host.key, location="SSH_KEY")
                secret = await attached_secret(session, ref, item.fleet.owner, item.fleet.project)
                if secret is None:
                    raise EnrollFailed(f"no secret named {host.key!r} for the fleet's owner")
                private_key = self.ctx.secret_box.decrypt(secret.ciphertext)
                ca = await load_ca(session, self.ctx.secret_box, now)
                node_key = new_key()
                cert = issue_node_cert(ca, make_csr(node_key, name).decode(), name, now)
            target = SshTarget(
                host.address, host.port, host.user, private_key, host.proxy_jump, host.host_key
            )
            install = AgentInstall(
                node=name,
                data_dir=spec.agent_data_dir,
                python=spec.agent_python,
                port=spec.agent_port,
                version=__version__,
                key_pem=key_pem(node_key),
                cert_pem=cert_pem(cert),
                ca_pem=cert_pem(ca.cert),
                gpus=host.gpus,
            )
            enrolled = await enroll(target, install)
        except EnrollFailed as e:
            await self._failed(name, item, str(e))
            return
        await self._register(name, item, enrolled)

    async def _register(self, name: str, item: Listed, enrolled: Enrolled) -> None:
        host, now = item.host, self.ctx.clock.now()
        endpoint = f"tls://{host.address}:{item.spec.agent_port}"
        if ":" in host.address:
            endpoint = f"tls://[{host.address}]:{item.spec.agent_port}"
        labels = {
            **host.labels,
            "partition": item.spec.name,
            "spine": item.spec.name,
            "ssh": f"{host.user}@{host.address}:{host.port}",
            "ssh_host_key": enrolled.host_key,
        }
        async with self.ctx.transaction() as session:
            await register_agent_node(
                session,
                name=name,
                endpoint=endpoint,
                provider=SSH,
                fleet_id=item.fleet.id,
                labels=labels,
                actor=ACTOR,
                now=now,
            )
            checks = ", ".join(f"{k} {v}" for k, v in enrolled.checks.items() if v)
            how = "installed the agent; " if enrolled.installed else ""
            message = f"host {host.address} enrolled as {name}: {how}{checks}"
            record_event(
                session,
                kind=FLEET_OK,
                message=message,
                actor=ACTOR,
                now=now,
                recipe_id=item.fleet.id,
            )
            await backoffs.succeeded(session, _key(name))

    async def _failed(self, name: str, item: Listed, why: str) -> None:
        now = self.ctx.clock.now()
        async with self.ctx.transaction() as session:
            delay = await backoffs.failed(
                session, _key(name), now, lambda n: doubling(RETRY_FIRST, n, RETRY_MAX)
            )
            message = (
                f"host {item.host.address} ({name}) not enrolled: {why}; retrying in {delay:.0f} s"
            )
            log.warning("%s", message)
            record_event(
                session,
                kind=FLEET_ERROR,
                message=message,
                actor=ACTOR,
                now=now,
                recipe_id=item.fleet.id,
            )

    async def _remove(self, session: AsyncSession, node: NodeModel) -> None:
        """Drain a node whose host left its fleet; terminate it once it is empty."""
        now, state = self.ctx.clock.now(), NodeState(node.state)
        why = "its host is no longer in the fleet"
        if state in (NodeState.READY, NodeState.UNREACHABLE):
            switch_node_state(session, node, NodeState.DRAINING, reason=why, actor=ACTOR, now=now)
        elif state != NodeState.DRAINING and not await busy_nodes(session, node.name):
            switch_node_state(session, node, NodeState.TERMINATED, reason=why, actor=ACTOR, now=now)


async def _ssh_nodes(session: AsyncSession) -> list[NodeModel]:
    """The live nodes of SSH fleets (a node without a fleet is none of theirs)."""
    query = select(NodeModel).where(
        NodeModel.provider == SSH,
        NodeModel.state != NodeState.TERMINATED.value,
        NodeModel.fleet_id.is_not(None),
    )
    return list((await session.execute(query)).scalars())


async def _taken(session: AsyncSession, name: str, fleet_id: str) -> bool:
    """Whether a live node of that name is not this fleet's (a joined host, another
    fleet's): then this host is not enrolled under it."""
    node = (await session.execute(select(NodeModel).where(NodeModel.name == name))).scalar()
    if node is None or NodeState(node.state).is_gone():
        return False
    return node.provider != SSH or node.fleet_id != fleet_id


def _key(node: str) -> str:
    return f"ssh-enroll:{node}"
