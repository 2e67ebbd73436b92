"""Review of issue 12's remote-node code: who may become which node, and for how long
its certificates hold. In-process server on SQLite; no hosts, no sshd."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from flotilla.clock import FakeClock
from flotilla.compute.agents.router import NodeRouter
from flotilla.errors import Conflict
from flotilla.runtime.taskspec import TaskState
from flotilla.runtime.tls import load_cert
from flotilla.server.db.models import NodeModel
from flotilla.server.reconcilers.agent_nodes import AgentNodes
from flotilla.server.services.fleets.agent_nodes import agent_nodes, register_agent_node
from tests.conftest import Api
from tests.factories import add_user
from tests.test_agent_tls import csr_for


async def _node(api: Api, name: str) -> NodeModel:
    async with api.ctx.sessions() as session:
        row = (await session.execute(select(NodeModel).where(NodeModel.name == name))).scalar()
    assert row is not None
    return row


async def _ssh_node(api: Api, name: str, endpoint: str) -> None:
    """What SshFleets._register (ssh_fleets.py:140-162) leaves after enrolling."""
    async with api.ctx.transaction() as session:
        await register_agent_node(
            session,
            name=name,
            endpoint=endpoint,
            provider="ssh",
            fleet_id=None,
            labels={},
            actor="ssh-fleets",
            now=api.ctx.clock.now(),
        )


async def test_a_join_cannot_take_over_an_ssh_fleet_node(sqlite_api: Api) -> None:
    """services/fleets/agents.py:190-213 (at HEAD) guards a name only by its `agent_node:` record,
    which SSH enrollment never writes; register_agent_node (services/
    agent_nodes.py:55-60) then repoints any `agent` or `ssh` row. So the holder
    of any name-less join token (one made for "a new host") gets a CA-signed
    certificate for an SSH fleet's node and has that node's agent endpoint moved
    to their machine: every task (and secret) placed on it goes there."""
    await _ssh_node(sqlite_api, "lab-h1", "tls://10.0.0.5:7477")
    client = sqlite_api.client
    token = (await client.post("/api/agents/join-tokens", json={})).json()["token"]
    body = {"token": token, "node": "lab-h1", "csr": csr_for("lab-h1"), "listen": "10.6.6.6:7477"}
    joined = await client.post("/api/agents/join", json=body)
    node = await _node(sqlite_api, "lab-h1")
    assert node.labels["agent"] == "tls://10.0.0.5:7477", "the node now points at the joiner"
    assert joined.status_code == 409, joined.text


async def test_an_ssh_fleet_host_cannot_take_over_a_joined_node(sqlite_api: Api) -> None:
    """ssh_fleets.py:71-77 enrolls any listed name not among the live *ssh*
    nodes; a joined node (provider `agent`) of that name is then repointed by
    register_agent_node (services/fleets/agent_nodes.py:55-60) to the fleet's host. Any
    member with write access can apply an SSH fleet (`name: gpu-1`, their own
    host), and the control plane hands that host a certificate for gpu-1 and
    gpu-1's work."""
    client = sqlite_api.client
    token = (await client.post("/api/agents/join-tokens", json={"node": "gpu-1"})).json()["token"]
    body = {"token": token, "node": "gpu-1", "csr": csr_for("gpu-1"), "listen": "10.0.0.7:7477"}
    assert (await client.post("/api/agents/join", json=body)).status_code == 200
    with pytest.raises(Conflict):
        await _ssh_node(sqlite_api, "gpu-1", "tls://10.6.6.6:7477")
    assert (await _node(sqlite_api, "gpu-1")).labels["agent"] == "tls://10.0.0.7:7477"


def _ssh_fleet(name: str) -> dict[str, Any]:
    host = {"address": "10.6.6.6", "key": "my-key", "name": name}
    spec = {"name": "mine", "provider": "ssh", "hosts": [host]}
    return {"schema_version": "2025.10.01", "type": "fleet", "spec": spec}


async def test_a_member_cannot_add_a_host_of_their_own_to_everyones_pool(
    sqlite_api: Api,
) -> None:
    """recipes.py (apply) lets any writer apply `type: fleet`; for provider: ssh
    the nodes are hosts the applier controls (they hold root there: the key is
    theirs), and placement (services/runs/placement.py) puts anyone's runs on any
    ready node. The member reads every secret (env and files) and output of other
    users' tasks placed there; a host claiming `isolation: full` changes nothing,
    it is the member's machine. Either only admins add SSH hosts, or such nodes run
    only their owner's (project's) work; this test expects the first."""
    mallory = await add_user(sqlite_api.ctx, "mallory")
    client = sqlite_api.client
    secret = {"name": "my-key", "value": "-----BEGIN OPENSSH PRIVATE KEY-----\n..."}
    assert (await client.post("/api/secrets", json=secret, headers=mallory)).status_code == 201
    applied = await client.put("/api/recipes", json=_ssh_fleet("mallory-box"), headers=mallory)
    assert applied.status_code == 403, applied.text


async def _on_event(_: TaskState) -> None:
    pass


async def test_the_control_plane_certificate_is_renewed_while_the_server_runs(
    sqlite_api: Api, tmp_path: Path
) -> None:
    """reconcilers/agent_nodes.py:105-109: control_plane_tls (which renews a
    certificate with a third of its 30 days left) runs once, at the first agent
    node, and its files are cached in `self._tls` for the life of the process
    (each RemoteNode also loads them once into its SSLContext). After 30 days up,
    every agent refuses the expired certificate: every remote node goes
    unreachable, then failed, and all their runs are evicted at once."""
    clock = FakeClock(datetime.now(UTC))
    settings = dataclasses.replace(sqlite_api.ctx.settings, data_dir=tmp_path / "cp")
    ctx = dataclasses.replace(sqlite_api.ctx, settings=settings, clock=clock)
    router = NodeRouter(object(), tmp_path / "logs")  # type: ignore[arg-type]
    router._on_event = _on_event
    loop = AgentNodes(ctx, router)
    await _ssh_node(sqlite_api, "lab-h1", "tls://127.0.0.1:9")
    cert = tmp_path / "cp" / "pki" / "control-plane.crt"

    async def sync() -> datetime:
        async with ctx.sessions() as session:
            await loop._sync(session, await agent_nodes(session))
        return load_cert(cert.read_bytes()).not_valid_after_utc

    try:
        first = await sync()
        clock.advance(25 * 86400)  # 5 days left of 30
        assert await sync() > first, "still the certificate of 25 days ago"
    finally:
        for node in list(router.remote.values()):
            await node.close()
