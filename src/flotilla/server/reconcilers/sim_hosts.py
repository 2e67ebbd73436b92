"""`sim` instances as real hosts (FLOTILLA_SIM_HOSTS=1, the server running as root):
each live sim node gets a host of its own — a network namespace with its own
address on a bridge, a private mount namespace with its own data dir
(`runtime/hosts`) — running its own agent on TLS with a certificate of the
control plane's CA. The node then is a host like any joined one: the router sends
its tasks to that agent, multi-node runs cross real network boundaries, the load
balancer reaches replicas at the host's address, and a host whose link goes down
is a real node failure (`agent_nodes.py`: unreachable, then failed, its runs
requeued).

The hosts live as long as this server process: they are removed when their node is
terminated and when the server stops (their tasks with them). Without root (or
without `ip`, `nsenter`, `unshare`) sim nodes stay processes on this machine, and
the server's log says why.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import subprocess
import sys

from sqlalchemy import select

from flotilla.core.status import NodeState
from flotilla.runtime.hosts import DATA_DIR, Host, HostError, HostNetwork, available
from flotilla.runtime.tls import cert_pem, key_pem, make_csr, new_key
from flotilla.server.context import ServerContext
from flotilla.server.db.models import NodeModel
from flotilla.server.pki import issue_node_cert
from flotilla.server.reconcilers.loop import ReconcileLoop
from flotilla.server.services.events import record_event
from flotilla.server.services.fleets.agent_nodes import AGENT_LABEL
from flotilla.server.services.fleets.agents import load_ca

log = logging.getLogger("flotilla.sim_hosts")
AGENT_PORT = 7477
TLS_DIR = f"{DATA_DIR}/agent"


class SimHosts(ReconcileLoop):
    name = "sim-hosts"

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx.changes, ctx.settings.resync_seconds)
        self.ctx = ctx
        self.network: HostNetwork | None = None
        self.hosts: dict[str, Host] = {}  # node name -> its host
        self.agents: dict[str, subprocess.Popen[bytes]] = {}
        self._in_process: set[str] = set()
        ok, why = available()
        self.unavailable = "" if ok else why
        if not ok:
            log.warning("FLOTILLA_SIM_HOSTS: sim nodes stay processes on this machine: %s", why)

    async def stop(self, grace: float = 10.0) -> None:
        await super().stop(grace)
        await asyncio.to_thread(self._close)

    async def step(self) -> None:
        if self.unavailable:
            return
        async with self.ctx.sessions() as session:
            query = select(NodeModel).where(NodeModel.provider == "sim")
            query = query.where(NodeModel.state != NodeState.TERMINATED.value)
            live = {n.name: n for n in (await session.execute(query)).scalars()}
        for name in set(self.hosts) - set(live):
            await asyncio.to_thread(self._remove, name)
        for name, node in live.items():
            if name in self.hosts or node.labels.get(AGENT_LABEL):
                continue
            if node.state == NodeState.PROVISIONING.value:
                await self._make(node)
            elif name not in self._in_process:
                # Ready before its host could be made (a provisioning delay shorter
                # than a resync): work may be placed on it already, so it stays a
                # process on this machine rather than move under running tasks.
                self._in_process.add(name)
                log.warning("sim node %s became ready before its host: it stays a process", name)

    async def _make(self, node: NodeModel) -> None:
        now = self.ctx.clock.now()
        async with self.ctx.transaction() as session:
            ca = await load_ca(session, self.ctx.secret_box, now)
        key = new_key()
        cert = issue_node_cert(ca, make_csr(key, node.name).decode(), node.name, now)
        gpus = f"{node.gpu_type}:{len(node.gpus)}" if node.gpu_type and node.gpus else None
        files = {"node.key": key_pem(key), "node.crt": cert_pem(cert), "ca.crt": cert_pem(ca.cert)}
        try:
            host = await asyncio.to_thread(self._start_host, node.name, files, gpus)
        except (HostError, OSError) as e:
            log.warning("sim node %s stays a process on this machine: %s", node.name, e)
            self.unavailable = str(e)
            return
        async with self.ctx.transaction() as session:
            row = await session.get(NodeModel, node.id)
            if row is None:
                return
            row.labels = {**row.labels, AGENT_LABEL: f"tls://{host.address}:{AGENT_PORT}"}
            row.address = host.address
            record_event(
                session,
                kind="node",
                message=f"{row.name}: a host of its own at {host.address}",
                actor="sim-hosts",
                now=now,
                node_id=row.id,
                recipe_id=row.fleet_id,
            )

    def _start_host(self, name: str, files: dict[str, bytes], gpus: str | None) -> Host:
        if self.network is None:
            self.network = HostNetwork()
        host = self.network.add_host(name)
        self.hosts[name] = host
        host.run(["mkdir", "-p", "-m", "700", TLS_DIR])
        for file, data in files.items():
            host.run(["sh", "-c", f"umask 077 && cat > {TLS_DIR}/{file}"], input=data.decode())
        argv = [sys.executable, "-m", "flotilla.runtime.agent", "--listen"]
        argv += [f"{host.address}:{AGENT_PORT}", "--tls-dir", TLS_DIR, "--data-dir", str(DATA_DIR)]
        if gpus:
            argv += ["--gpus", gpus]
        log_file = f"{DATA_DIR}/agent.log"
        shell = " ".join(shlex.quote(a) for a in argv) + f" >> {log_file} 2>&1"
        self.agents[name] = host.popen(["sh", "-c", f"exec {shell}"])
        return host

    def _remove(self, name: str) -> None:
        agent = self.agents.pop(name, None)
        if agent is not None:
            agent.kill()
            agent.wait(10)
        host = self.hosts.pop(name, None)
        if host is not None:
            host.remove()

    def _close(self) -> None:
        for name in list(self.hosts):
            self._remove(name)
        if self.network is not None:
            self.network.close()
            self.network = None

    def host(self, node: str) -> Host | None:
        return self.hosts.get(node)
