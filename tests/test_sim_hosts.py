"""`sim` instances as real hosts (issue 12, item 3; FLOTILLA_SIM_HOSTS=1, root): each
sim node of a fleet is a host of its own with its own address and files, running
its own agent; a 2-rank job crosses the two hosts; a host whose link is cut is a
real node failure (unreachable, then failed; the run requeued), and when the
server stops its hosts are gone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flotilla.compute.sim.provider import IbNetwork, SimConfig, SimProvider
from flotilla.server.reconcilers.sim_hosts import SimHosts
from tests.conftest import Api, make_settings, open_api
from tests.factories import apply_and_start, job, wait_for
from tests.hosts_fixture import leftovers, require_hosts
from tests.test_recovery import H100, fleet_of, log_of
from tests.test_remote_nodes import wait_done

pytestmark = pytest.mark.slow


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    require_hosts()
    cloud = SimProvider(
        SimConfig(
            networks=[IbNetwork("east-ib", "us-east1", H100, slices=4 * 8, partitions=1)],
            provisioning_delay=3.0,  # the hosts are made while their nodes provision
        )
    )
    settings = make_settings(
        data_dir,
        local_node=False,
        sim_hosts=True,
        node_heartbeat_seconds=0.5,
        node_unreachable_seconds=2.0,
        node_failed_seconds=4.0,
    )
    async for item in open_api(settings, providers={"sim": cloud}):
        yield item


def sim_hosts(api: Api) -> SimHosts:
    loops = api.client._transport.app.state.loops  # type: ignore[attr-defined]
    return next(loop for loop in loops if isinstance(loop, SimHosts))


async def test_sim_nodes_are_hosts_of_their_own(api: Api) -> None:
    names = await fleet_of(api, 2, placement="cluster")
    hosts = sim_hosts(api)
    nodes = {n["name"]: n for n in (await api.client.get("/api/nodes")).json()["nodes"]}
    addresses = {nodes[n]["address"] for n in names}
    assert len(addresses) == 2 and "127.0.0.1" not in addresses
    assert all(nodes[n]["labels"]["agent"].startswith("tls://") for n in names)

    command = 'echo "$(hostname) $FLOTILLA_NODE"; sleep 1'
    _, run_id = await apply_and_start(
        api.client, job("two", command, scale=2, resources={"gpu": "H100:8"})
    )
    await wait_done(api.client, run_id, "succeeded", 60)
    seen = {(await log_of(api, run_id, rank)).split()[0] for rank in (0, 1)}
    assert seen == set(names)  # each rank ran on its own host, named as its node

    # A host's link cut is a node failure: unreachable, failed, its run requeued.
    _, run_id = await apply_and_start(
        api.client, job("long", "sleep 600", resources={"gpu": "H100:8"})
    )
    run = await wait_done(api.client, run_id, "running", 30)
    victim = run["tasks"][0]["node"]
    host = hosts.host(victim)
    assert host is not None
    host.link_down()

    async def node_failed() -> bool:
        """It went `failed` (its fleet may release it at once: the event stays)."""
        node = (await api.client.get(f"/api/nodes/{victim}")).json()
        return any(
            e["message"].endswith("-> failed") or "-> failed:" in e["message"]
            for e in node["events"]
        )

    await wait_for(node_failed, 90, interval=0.2, what=f"{victim} failed")

    async def requeued() -> bool:
        run = (await api.client.get(f"/api/runs/{run_id}")).json()
        return run["attempt"] == 1 and run["status"] in ("pending", "starting", "running")

    try:
        await wait_for(requeued, 60, interval=0.2, what="the run requeued")
    except AssertionError:
        run = (await api.client.get(f"/api/runs/{run_id}")).json()
        events = (await api.client.get(f"/api/runs/{run_id}/events")).json()
        raise AssertionError(f"{run}\n{events}") from None


async def test_no_sim_host_outlives_its_server(data_dir: Path) -> None:
    require_hosts()
    cloud = SimProvider(
        SimConfig(
            networks=[IbNetwork("east-ib", "us-east1", H100, slices=8, partitions=1)],
            provisioning_delay=3.0,
        )
    )
    settings = make_settings(data_dir, local_node=False, sim_hosts=True)
    prefix = ""
    async for api in open_api(settings, providers={"sim": cloud}):
        await fleet_of(api, 1)
        hosts = sim_hosts(api)
        assert hosts.network is not None
        prefix = hosts.network.prefix
        assert leftovers(prefix)  # the host exists while the server runs
    assert prefix and leftovers(prefix) == []
