"""SSH fleets (issue 12, item 2): three hosts of their own, each with a real sshd;
a `provider: ssh` fleet lists them with a key kept as a Flotilla secret. Flotilla
logs in, checks each host, starts its agent with a certificate of the control
plane's CA, and the hosts become ready nodes that run work (a 2-rank gloo
all-reduce across two of them). Bad recipes are refused
naming the field; a host that refuses the key is a fleet event, not a node; a host
removed from the list is drained, then terminated."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from sqlalchemy import select

from flotilla.runtime.hosts import Host, HostNetwork
from flotilla.server.db.models import EventModel
from tests.factories import apply_and_start, job, wait_for
from tests.hosts_fixture import host_network_fixture  # noqa: F401
from tests.test_remote_nodes import (
    ALLREDUCE,
    PY,
    logs,
    node_state,
    nodes,
    remote_settings,
    served,
    wait_done,
)

pytestmark = pytest.mark.slow
SSHD = shutil.which("sshd") or shutil.which("sshd", path="/usr/sbin:/usr/bin")
DATA = "/srv/flotilla-agent"  # the agent's data dir on each host (hosts' /srv is private)


def start_sshd(host: Host, authorized: bytes, host_key: asyncssh.SSHKey | None = None) -> Any:
    """sshd on `host`'s own address, port 22, accepting only `authorized`."""
    key = (host_key or asyncssh.generate_private_key("ssh-ed25519")).export_private_key().decode()
    config = (
        f"Port 22\nListenAddress {host.address}\nHostKey /srv/sshd/host_key\n"
        "AuthorizedKeysFile /srv/sshd/authorized_keys\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "StrictModes no\nUsePAM no\nPidFile /srv/sshd/sshd.pid\n"
    )
    host.run(["mkdir", "-p", "-m", "700", "/srv/sshd", "/run/sshd"])
    for name, text in (
        ("host_key", key),
        ("authorized_keys", authorized.decode()),
        ("config", config),
    ):
        host.run(["sh", "-c", f"umask 077 && cat > /srv/sshd/{name}"], input=text)
    assert SSHD is not None
    proc = host.popen([SSHD, "-D", "-e", "-f", "/srv/sshd/config"], stderr=subprocess.DEVNULL)
    return proc


@contextlib.contextmanager
def sshds(hosts: list[Host], authorized: bytes) -> Iterator[None]:
    procs = [start_sshd(h, authorized) for h in hosts]
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


def fleet(hosts: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "schema_version": "2025.10.01",
        "type": "fleet",
        "spec": {
            "name": "lab",
            "provider": "ssh",
            "hosts": hosts,
            "agent_data_dir": DATA,
            "agent_python": sys.executable,  # the hosts see this machine's Python
            **spec,
        },
    }


def listed(host: Host, **extra: Any) -> dict[str, Any]:
    return {"address": host.address, "key": "lab-key", "name": host.name, "gpus": "H100:1", **extra}


async def test_an_ssh_fleet_enrolls_its_hosts_and_runs_work(
    host_network: HostNetwork, data_dir: Path
) -> None:
    if SSHD is None:
        pytest.skip("no sshd here (openssh-server)")
    hosts = [host_network.add_host(n) for n in ("h1", "h2", "h3")]
    key = asyncssh.generate_private_key("ssh-ed25519")
    other = asyncssh.generate_private_key("ssh-ed25519")
    with sshds(hosts[:2], key.export_public_key()), sshds(hosts[2:], other.export_public_key()):
        async with served(remote_settings(data_dir), host_network.address) as (api, ctx):
            # Bad recipes: 422 naming the field; nothing is created.
            bad = await api.put("/api/recipes", json=fleet([listed(hosts[0])]))
            assert bad.status_code == 422 and "spec.hosts[0].key" in bad.text, bad.text
            bad = await api.put("/api/recipes", json=fleet([]))
            assert bad.status_code == 422 and "hosts" in bad.text, bad.text
            secret = {"name": "lab-key", "value": key.export_private_key().decode()}
            assert (await api.post("/api/secrets", json=secret)).status_code == 201

            applied = await api.put("/api/recipes", json=fleet([listed(h) for h in hosts]))
            assert applied.status_code == 201, applied.text
            for host in hosts[:2]:
                node = await node_state(api, host.name, "ready", timeout=60)
                assert node["address"] == host.address
            # h3 refuses the key: an event on the fleet, no node.
            fleet_id = applied.json()["state"]["id"]

            async def refused() -> list[str]:
                async with ctx.sessions() as session:
                    query = select(EventModel.message).where(EventModel.recipe_id == fleet_id)
                    messages = (await session.execute(query)).scalars()
                return [m for m in messages if "not enrolled" in m]

            found = await wait_for(refused, 30, interval=0.2, what="h3's refusal")
            assert "refused" in found[0] and "h3" in found[0], found
            assert "h3" not in await nodes(api)

            # Work runs on the enrolled hosts.
            spec = {"resources": {"gpu": "H100:1"}}
            recipe = {
                "schema_version": "2025.10.01",
                "type": "job",
                "spec": {"name": "where", "command": "hostname", **spec},
            }
            _, run_id = await apply_and_start(api, recipe)
            await wait_done(api, run_id, "succeeded", 30)
            assert (await logs(api, run_id)).strip() in ("h1", "h2")
            # A 2-rank gloo all-reduce across the fleet's two hosts (one GPU each).
            spec = job("allreduce", [PY, "-c", ALLREDUCE.read_text()], scale=2, **spec)
            _, run_id = await apply_and_start(api, spec)
            await wait_done(api, run_id, "succeeded", 30)
            outputs = [await logs(api, run_id, rank) for rank in (0, 1)]
            assert "sum 3.0" in outputs[0] and "sum 3.0" in outputs[1], outputs
            assert {o.split(" on ", 1)[1].split(":")[0] for o in outputs} == {"h1", "h2"}

            # h2 leaves the fleet: drained, then terminated.
            kept = await api.put("/api/recipes", json=fleet([listed(hosts[0])]))
            assert kept.status_code in (200, 201), kept.text
            try:
                await node_state(api, "h2", "terminated", timeout=15)
            except AssertionError:
                raise AssertionError(str(await nodes(api))) from None
            assert (await nodes(api))["h1"]["state"] == "ready"
            with contextlib.suppress(httpx.HTTPError):
                await api.delete(f"/api/fleets/{fleet_id}")
    for host in hosts:
        host.kill_all()


async def test_host_keys_are_pinned_and_a_host_is_reached_through_a_jump_host(
    host_network: HostNetwork, data_dir: Path
) -> None:
    """h2 drops SSH from the control plane's address: it is enrolled through h1
    (`proxy_jump`). h1 is listed again under another name with a `host_key` that is
    not its own: refused, saying so."""
    if SSHD is None:
        pytest.skip("no sshd here (openssh-server)")
    h1, h2 = host_network.add_host("h1"), host_network.add_host("h2")
    key = asyncssh.generate_private_key("ssh-ed25519")
    h1_key = asyncssh.generate_private_key("ssh-ed25519")
    wrong = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    procs = [
        start_sshd(h1, key.export_public_key(), h1_key),
        start_sshd(h2, key.export_public_key()),
    ]
    drop = ["iptables", "-A", "INPUT", "-s", host_network.address, "-p", "tcp", "--dport", "22"]
    h2.run([*drop, "-j", "DROP"])
    try:
        async with served(remote_settings(data_dir), host_network.address) as (api, ctx):
            secret = {"name": "lab-key", "value": key.export_private_key().decode()}
            assert (await api.post("/api/secrets", json=secret)).status_code == 201
            hosts = [
                listed(h1, name="pinned", host_key=wrong),
                listed(h2, proxy_jump=f"root@{h1.address}:22"),
            ]
            applied = await api.put("/api/recipes", json=fleet(hosts))
            assert applied.status_code == 201, applied.text
            node = await node_state(api, "h2", "ready", timeout=60)
            assert node["labels"]["ssh_host_key"].startswith("ssh-ed25519 ")
            fleet_id = applied.json()["state"]["id"]

            async def refused() -> list[str]:
                async with ctx.sessions() as session:
                    query = select(EventModel.message).where(EventModel.recipe_id == fleet_id)
                    messages = (await session.execute(query)).scalars()
                return [m for m in messages if "pinned" in m and "not enrolled" in m]

            found = await wait_for(refused, 30, interval=0.2, what="the pinned key's refusal")
            assert "host key is not the pinned one" in found[0], found
            assert "pinned" not in await nodes(api)
    finally:
        for proc in procs:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
