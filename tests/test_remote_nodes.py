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

import httpx
import pytest
import uvicorn

from flotilla.config import Settings
from flotilla.runtime.hosts import Host, HostNetwork
from flotilla.server.app import create_app
from flotilla.server.context import ServerContext
from tests.conftest import make_settings
from tests.factories import (
    AUTH,
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


def remote_settings(data_dir: Path) -> Settings:
    return make_settings(
        data_dir,
        local_node=False,  # every run must go to a host
        node_heartbeat_seconds=0.5,
        node_unreachable_seconds=2.0,
        node_failed_seconds=5.0,
    )


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
            spec = job("allreduce", f"{PY} {ALLREDUCE}", scale=2, resources={"gpu": "H100:1"})
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
