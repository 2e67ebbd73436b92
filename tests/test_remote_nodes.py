"""Nodes on other hosts (issue 12): hosts of their own (network namespaces with
their own addresses and files) join with `flo agent join`, serve their agent with
`flo agent serve`, and become nodes that the server schedules on. A 2-rank gloo
all-reduce crosses two hosts; logs are mirrored to the control plane; a host whose
link is cut goes unreachable, then failed, its run is requeued and finished on the
other host, the lost attempt's logs stay readable, and once the link is back what
still ran there is stopped (nothing runs twice) and the node is admitted again."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
import uvicorn
from sqlalchemy import select

from flotilla.config import Settings
from flotilla.runtime.hosts import Host, HostNetwork
from flotilla.server.app import create_app
from flotilla.server.context import ServerContext
from flotilla.server.db.models import UserModel
from tests.conftest import make_settings
from tests.factories import (
    AUTH,
    ServerProcess,
    apply_and_start,
    free_port,
    get_run,
    job,
    process_gone,
    wait_for,
    wait_run,
)
from tests.hosts_fixture import host_network_fixture  # noqa: F401

pytestmark = pytest.mark.slow
PY = sys.executable
FLO = str(Path(PY).parent / "flo")
ALLREDUCE = Path(__file__).resolve().parents[1] / "examples" / "allreduce.py"
TLS_DIR = "/srv/flotilla/agent"


@contextlib.asynccontextmanager
async def served(
    settings: Settings, host: str
) -> AsyncIterator[tuple[httpx.AsyncClient, ServerContext]]:
    """The control plane on a real port of `host` (uvicorn in this event loop)."""
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", loop="asyncio")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the server did not start"
        await asyncio.sleep(0.02)
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=AUTH) as client:
            yield client, app.state.ctx
    finally:
        server.should_exit = True
        await task


async def join_and_serve(api: httpx.AsyncClient, host: Host, gpus: str) -> subprocess.Popen[str]:
    made = await api.post("/api/agents/join-tokens", json={"node": host.name})
    assert made.status_code == 201, made.text
    token = made.json()
    argv = [FLO, "agent", "join", str(api.base_url).rstrip("/"), "--token", token["token"]]
    argv += ["--ca-sha256", token["ca_sha256"], "--tls-dir", TLS_DIR]
    argv += ["--advertise", f"{host.address}:7477"]
    joined = await asyncio.to_thread(host.run, argv)
    assert f"joined as {host.name}" in joined.stdout, joined.stderr
    serve = [FLO, "agent", "serve", "--listen", f"{host.address}:7477", "--tls-dir", TLS_DIR]
    return host.popen([*serve, "--gpus", gpus])


async def nodes(api: httpx.AsyncClient, state: str | None = None) -> dict[str, dict[str, Any]]:
    params = {"state": state} if state else {}
    listed = (await api.get("/api/nodes", params=params)).json()["nodes"]
    return {n["name"]: n for n in listed}


async def node_state(api: httpx.AsyncClient, name: str, state: str, timeout: float = 30) -> Any:
    async def check() -> dict[str, Any] | None:
        node = (await nodes(api, state if state == "terminated" else None)).get(name)
        return node if node and node["state"] == state else None

    return await wait_for(check, timeout, interval=0.1, what=f"node {name} {state}")


async def logs(api: httpx.AsyncClient, run_id: str, rank: int = 0, attempt: int = 0) -> str:
    answer = await api.get(f"/api/runs/{run_id}/logs", params={"rank": rank, "attempt": attempt})
    assert answer.status_code == 200, answer.text
    return answer.text


async def wait_done(api: httpx.AsyncClient, run_id: str, status: str, timeout: float) -> Any:
    """`wait_run`, saying what the run went through when it times out."""
    try:
        return await wait_run(api, run_id, status, timeout=timeout)
    except AssertionError:
        run = (await api.get(f"/api/runs/{run_id}")).json()
        events = (await api.get(f"/api/runs/{run_id}/events")).json()
        raise AssertionError(f"run {run_id}: {run}\nevents: {events}") from None


def remote_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "local_node": False,  # every run must go to a host
        # The hosts' tasks run this machine's virtualenv Python (torch, for the
        # all-reduce), under /root: no task's own account may enter it.
        "run_as_user": False,
        "node_heartbeat_seconds": 0.5,
        "node_unreachable_seconds": 2.0,
        "node_failed_seconds": 5.0,
        **overrides,
    }
    return make_settings(data_dir, **values)


async def test_joined_hosts_run_work_and_a_lost_host_fails_over(
    host_network: HostNetwork, data_dir: Path
) -> None:
    h1, h2 = host_network.add_host("h1"), host_network.add_host("h2")
    agents: list[subprocess.Popen[str]] = []
    try:
        async with served(remote_settings(data_dir), host_network.address) as (api, _):
            for host in (h1, h2):
                agents.append(await join_and_serve(api, host, "H100:1"))
            for host in (h1, h2):
                node = await node_state(api, host.name, "ready")
                assert node["address"] == host.address
                assert node["gpus"] == 1 or len(node.get("gpus", [])) == 1 or node, node

            # A 2-rank gloo all-reduce across the hosts, each rank seeing the other.
            # The script's text, not its path: hosts have their own /tmp (a CI clone's).
            command = [PY, "-c", ALLREDUCE.read_text()]
            spec = job("allreduce", command, scale=2, resources={"gpu": "H100:1"})
            _, run_id = await apply_and_start(api, spec)
            await wait_done(api, run_id, "succeeded", 20)
            outputs = [await logs(api, run_id, rank) for rank in (0, 1)]
            assert "sum 3.0" in outputs[0] and "sum 3.0" in outputs[1], outputs
            assert {o.split(" on ", 1)[1].split(":")[0] for o in outputs} == {"h1", "h2"}

            # A run on h1 (h2 cordoned), then h1's link is cut.
            assert (await api.post("/api/nodes/h2/cordon")).status_code == 200
            sticky = job(
                "sticky",
                'echo "attempt on $(hostname)"; if [ "$(hostname)" = h1 ]; then exec sleep 600; fi',
                resources={"gpu": "H100:1"},
            )
            _, run_id = await apply_and_start(api, sticky)
            run = await wait_done(api, run_id, "running", 30)
            assert (await api.post("/api/nodes/h2/uncordon")).status_code == 200
            await wait_for(
                lambda: logs(api, run_id), 10, interval=0.1, what="attempt 1's log mirrored"
            )
            pid = run["tasks"][0]["pid"]
            assert pid and not await process_gone(pid)
            h1.link_down()
            await node_state(api, "h1", "unreachable", timeout=15)
            await node_state(api, "h1", "failed", timeout=20)
            done = await wait_done(api, run_id, "succeeded", 60)
            assert done["attempt"] == 1
            assert "attempt on h2" in await logs(api, run_id, attempt=1)
            assert "attempt on h1" in await logs(api, run_id, attempt=0)  # the lost one's

            # The link back: what ran on h1 is stopped, then h1 is admitted again.
            h1.link_up()
            await node_state(api, "h1", "ready", timeout=30)
            await wait_for(lambda: process_gone(pid), 15, what="h1's old task stopped")
            assert (await get_run(api, run_id))["attempt"] == 1  # and not run again
    finally:
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(10)


async def test_a_killed_server_readopts_remote_tasks_without_running_them_twice(
    host_network: HostNetwork, data_dir: Path
) -> None:
    """kill -9 of the control plane while a task runs on a host: the host's task runs on,
    the restarted server re-adopts it (same attempt, same process) and its whole log
    arrives, once."""
    h1 = host_network.add_host("h1")
    server = ServerProcess(
        data_dir,
        FLOTILLA_HOST=host_network.address,
        FLOTILLA_LOCAL_NODE="0",
        FLOTILLA_NODE_HEARTBEAT_SECONDS="0.5",
        FLOTILLA_NODE_UNREACHABLE_SECONDS="2",
        FLOTILLA_NODE_FAILED_SECONDS="30",
    )
    server.url = f"http://{host_network.address}:{server.port}"
    agent: subprocess.Popen[str] | None = None
    try:
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as api:
            agent = await join_and_serve(api, h1, "H100:1")
            await node_state(api, "h1", "ready")
            command = "echo start; sleep 4; echo end"
            _, run_id = await apply_and_start(
                api, job("long", command, resources={"gpu": "H100:1"})
            )
            run = await wait_done(api, run_id, "running", 30)
            pid = run["tasks"][0]["pid"]
            await wait_for(lambda: logs(api, run_id), 10, interval=0.1, what="the log begun")
        await asyncio.to_thread(server.kill9)
        assert not await process_gone(pid)  # the task runs on without its server
        await asyncio.to_thread(server.start)
        async with httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=30) as api:
            done = await wait_done(api, run_id, "succeeded", 30)
            assert done["attempt"] == 0 and done["tasks"][0]["pid"] == pid
            assert (await logs(api, run_id)).splitlines() == ["start", "end"]
    finally:
        server.stop()
        if agent is not None:
            agent.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(10)


WHO = """
import os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = socket.gethostname().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"""


async def test_a_deployment_serves_from_replicas_on_two_hosts(
    host_network: HostNetwork, data_dir: Path
) -> None:
    """Two replicas, one per host, behind the load balancer (source-IP hashing) and
    reached through the front door; each replica's backend is its node's address.
    SSH sessions into the replicas on the other hosts (`ssh_into_replica`)."""
    h1, h2 = host_network.add_host("h1"), host_network.add_host("h2")
    agents: list[subprocess.Popen[str]] = []
    try:
        settings = remote_settings(data_dir, ssh_port=0)
        async with served(settings, host_network.address) as (api, ctx):
            for host in (h1, h2):
                agents.append(await join_and_serve(api, host, "H100:1"))
            for host in (h1, h2):
                await node_state(api, host.name, "ready")
            key = asyncssh.generate_private_key("ssh-ed25519")
            async with ctx.transaction() as session:
                query = select(UserModel).where(UserModel.name == "admin")
                admin = (await session.execute(query)).scalar_one()
                admin.ssh_public_keys = [key.export_public_key().decode().strip()]
            recipe = {
                "type": "deployment",
                "spec": {
                    "name": "web",
                    "command": [PY, "-c", WHO],
                    "scale": 2,
                    "resources": {"gpu": "H100:1"},  # one replica per host
                    "routes": [{"container_port": 8000, "visibility": "unauthenticated"}],
                    "health_check": {"interval": 0.2, "timeout": 0.5, "failure_count": 2},
                    "start_ssh": True,
                },
            }
            applied = await api.put("/api/recipes", json=recipe)
            assert applied.status_code == 201, applied.text

            async def both_ready() -> list[dict[str, Any]] | None:
                view = (await api.get("/api/deployments/web")).json()
                replicas = [r for r in view["replicas"] if r["ready"]]
                return replicas if len(replicas) == 2 else None

            replicas = await wait_for(both_ready, 60, interval=0.2, what="two ready replicas")
            assert {r["address"] for r in replicas} == {h1.address, h2.address}
            answer = await api.get("/d/~admin/web/", headers={"Authorization": ""})
            assert answer.status_code == 200 and answer.text in ("h1", "h2"), answer.text
            # The same client (source address) keeps reaching the same replica.
            again = [(await api.get("/d/~admin/web/")).text for _ in range(5)]
            assert set(again) == {answer.text}
            assert ctx.ssh_gateway is not None
            for replica in replicas:
                where = "h1" if replica["address"] == h1.address else "h2"
                port = int(next(iter(replica["ports"].values())))  # PORT, on its host
                await ssh_into_replica(ctx, key, f"web.{replica['number']}", where, port)
    finally:
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                agent.wait(10)


async def ssh_into_replica(
    ctx: ServerContext, key: asyncssh.SSHKey, login: str, host: str, port: int
) -> None:
    """`flo ssh` into a replica on another host, through the gateway: a command runs
    there (its host name, the task's environment, its exit status back), a port
    forward reaches the replica's own server, SFTP lists its working directory, and a
    forward to a port nothing in the task listens on is refused, saying so."""
    assert ctx.ssh_gateway is not None
    async with asyncssh.connect(
        "127.0.0.1", ctx.ssh_gateway.port, username=login, client_keys=[key], known_hosts=None
    ) as conn:
        ran = await conn.run("hostname; echo $FLOTILLA_RANK; exit 7", check=False)
        assert ran.exit_status == 7, (ran.stdout, ran.stderr)
        assert str(ran.stdout).split() == [host, "0"], (ran.stdout, ran.stderr)
        reader, writer = await conn.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.0\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.endswith(host.encode()), answer
        async with conn.start_sftp_client() as sftp:
            assert isinstance(await sftp.listdir("."), list)
        with pytest.raises(asyncssh.ChannelOpenError, match=r"listens on 127\.0\.0\.1:1$"):
            await conn.open_connection("127.0.0.1", 1)
