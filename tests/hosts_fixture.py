"""Fixtures for tests that need several real hosts on this machine (issue 12):
`host_network`, a `HostNetwork` closed after the test, and `three_hosts` on it.
Both skip, with the reason, where hosts cannot be made (not root, tools missing).

Import the fixture functions into a test module to use them:
`from tests.hosts_fixture import host_network_fixture, three_hosts_fixture  # noqa: F401`.
`leftovers(prefix)` lists what of a closed network is still on the machine."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.runtime.hosts import Host, HostNetwork, available


def require_hosts() -> None:
    ok, why = available()
    if not ok:
        pytest.skip(f"no multi-host harness here: {why}")


@pytest.fixture(name="host_network")
def host_network_fixture() -> Iterator[HostNetwork]:
    require_hosts()
    net = HostNetwork()
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(name="three_hosts")
def three_hosts_fixture(host_network: HostNetwork) -> list[Host]:
    return [host_network.add_host(name) for name in ("h1", "h2", "h3")]


def leftovers(prefix: str) -> list[str]:
    """Everything on this machine named with `prefix`: network namespaces,
    interfaces, mounts, scratch dirs. Empty after a clean `close()`."""
    found = []
    netns = Path("/run/netns")
    if netns.is_dir():
        found += [f"netns {p.name}" for p in netns.iterdir() if p.name.startswith(prefix)]
    found += [f"link {n}" for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    found += [
        f"mount {line}" for line in Path("/proc/mounts").read_text().splitlines() if prefix in line
    ]
    tmp = Path(tempfile.gettempdir())
    found += [f"dir {p}" for p in tmp.iterdir() if p.name.startswith(prefix)]
    return found
