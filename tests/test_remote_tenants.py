"""Tenants isolated on a host of their own (issue 12), with the server's default
(FLOTILLA_RUN_AS_USER unset: on wherever the node's agent can isolate): a host
joined with `flo agent join` whose agent runs as root shows `isolation: full`; an
ordinary user's job there runs as their account and reads neither the host
agent's files (its TLS key) nor another user's task files; an SSH session into it,
through the control plane's gateway and the host's session relay, runs as that
account, in the task's cgroup and with its view; a ticket the gateway did not ask
for opens nothing."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path

import asyncssh
import httpx
import pytest
from sqlalchemy import select

from flotilla.runtime.hosts import HostNetwork
from flotilla.runtime.isolation import FULL, probe
from flotilla.server.context import ServerContext
from flotilla.server.db.models import UserModel
from tests.factories import add_user, job, wait_run
from tests.hosts_fixture import host_network_fixture  # noqa: F401
from tests.test_remote_nodes import (
    TLS_DIR,
    join_and_serve,
    logs,
    node_state,
    remote_settings,
    served,
)

PROBE = probe()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(PROBE.level != FULL, reason=f"isolation: {PROBE.summary()}"),
]
HOST_DATA = str(Path(TLS_DIR).parent)  # the host agent's data dir: its key, its tasks


async def start(
    api: httpx.AsyncClient, headers: httpx.Headers, name: str, command: str, **spec: object
) -> str:
    recipe = job(name, command, resources={"gpu": "H100:1"}, **spec)
    applied = await api.put("/api/recipes", json=recipe, headers=headers)
    assert applied.status_code == 201, applied.text
    started = await api.post(f"/api/jobs/{applied.json()['state']['id']}/start", headers=headers)
    assert started.status_code == 200, started.text
    return str(started.json()["run"]["id"])


async def ssh_key_of(ctx: ServerContext, name: str) -> asyncssh.SSHKey:
    """A new key, registered as user `name`'s only one."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    async with ctx.transaction() as session:
        user = (await session.execute(select(UserModel).where(UserModel.name == name))).scalar_one()
        user.ssh_public_keys = [key.export_public_key().decode().strip()]
    return key


async def test_a_users_work_on_a_remote_host_is_isolated_there(
    host_network: HostNetwork, data_dir: Path
) -> None:
    host = host_network.add_host("h1")
    agent: subprocess.Popen[str] | None = None
    try:
        settings = remote_settings(data_dir, ssh_port=0, run_as_user=None)
        async with served(settings, host_network.address) as (api, ctx):
            agent = await join_and_serve(api, host, "H100:2")
            node = await node_state(api, "h1", "ready")
            assert node["labels"]["isolation"] == "full", node["labels"]
            assert node["labels"]["gpu_fencing"] == PROBE.gpu_fencing  # the same kernel
            alice, bob = await add_user(ctx, "alice"), await add_user(ctx, "bob")

            bobs = await start(api, bob, "bobs", "echo BOB-SECRET > BOBS-NOTES; exec sleep 120")
            await wait_run(api, bobs, "running", timeout=30)
            listed = host.run(["ls", "-R", f"{HOST_DATA}/runs/{bobs}"]).stdout
            assert "BOBS-NOTES" in listed  # it is there, for root to see
            command = (
                f"id -un; cat {TLS_DIR}/*; ls -R {HOST_DATA};"
                f" cat {HOST_DATA}/runs/{bobs}/*/*/root/workspace/BOBS-NOTES;"
                " find /srv /home /tmp -name BOBS-NOTES 2>/dev/null; echo done"
            )
            mine = await start(api, alice, "snoop", command)
            run = await wait_run(api, mine, "succeeded", "failed", timeout=60)
            text = await logs(api, mine)
            lines = text.splitlines()
            assert lines[0] == "flo-alice", text
            assert "BEGIN" not in text and "PRIVATE" not in text, text  # no TLS key
            assert "BOB-SECRET" not in text and "rank-0" not in text, text
            # The data dir is an empty 0711 tmpfs in the task's view, but for the way
            # down to its own directory.
            assert f"cat: '{TLS_DIR}/*': No such file or directory" in text, text
            assert f"cannot open directory '{HOST_DATA}': Permission denied" in text, text
            assert lines[-1] == "done" and run["status"] == "succeeded", text

            # An SSH session into alice's task on h1 runs as her account, in its cgroup.
            key = await ssh_key_of(ctx, "alice")
            shell = await start(api, alice, "shell", "exec sleep 120", start_ssh=True)
            await wait_run(api, shell, "running", timeout=30)
            assert ctx.ssh_gateway is not None
            async with asyncssh.connect(
                "127.0.0.1",
                ctx.ssh_gateway.port,
                username="shell",
                client_keys=[key],
                known_hosts=None,
            ) as conn:
                ran = await conn.run(f"id -un; hostname; ls {HOST_DATA}; cat /proc/self/cgroup")
            out = str(ran.stdout)
            assert out.splitlines()[:2] == ["flo-alice", "h1"], (out, ran.stderr)
            assert f"cannot open directory '{HOST_DATA}': Permission denied" in str(ran.stderr)
            assert shell in out, out  # the task's cgroup is named after its run
            # Bob may not enter alice's task, nor reach it without the gateway.
            bob_key = await ssh_key_of(ctx, "bob")
            async with asyncssh.connect(
                "127.0.0.1",
                ctx.ssh_gateway.port,
                username="alice/shell",
                client_keys=[bob_key],
                known_hosts=None,
            ) as conn:
                refused = await conn.run("id", check=False)
            assert refused.exit_status != 0 and "flo-alice" not in str(refused.stdout)
            with pytest.raises(asyncssh.PermissionDenied):
                await asyncssh.connect(
                    host.address,
                    7478,
                    username="flotilla",
                    password="not-a-ticket",
                    known_hosts=None,
                    client_keys=None,
                    agent_path=None,
                )
    finally:
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(10)
        host.kill_all()
