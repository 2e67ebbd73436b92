"""The multi-host harness (issue 12): hosts as network namespaces on a bridge, each
with its own address, hostname, /etc files and private disk; real TCP between them;
the root namespace's loopback and temp files out of their reach; a link cut like a
pulled cable; and nothing left on the machine after close, even when a test fails.

Needs root, iproute2 and util-linux; skipped with the reason otherwise."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flotilla
from flotilla.runtime.hosts import DATA_DIR, Host, HostError, HostNetwork
from flotilla.runtime.procs import process_start_ticks
from tests.hosts_fixture import (
    host_network_fixture,  # noqa: F401
    leftovers,
    require_hosts,
    three_hosts_fixture,  # noqa: F401
)

PY = sys.executable

# Echo server: accepts connections forever, answers each with its hostname and the
# peer's address. Prints "ready" once listening.
SERVER = """
import socket, sys
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, peer = srv.accept()
    with conn:
        conn.recv(100)
        conn.sendall(f"{socket.gethostname()} {peer[0]}".encode())
"""

# One connection attempt: prints the answer, or the error's class name (exit 1).
CLIENT = """
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
    s.sendall(b"hi")
    print(s.recv(100).decode())
except OSError as e:
    print(type(e).__name__)
    sys.exit(1)
"""


def start_server(host: Host, port: int = 7000) -> subprocess.Popen[bytes]:
    proc = host.popen([PY, "-c", SERVER, str(port)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def connect(host: Host, target: str, port: int = 7000, timeout: float = 2.0) -> str:
    done = host.run([PY, "-c", CLIENT, target, str(port), str(timeout)], check=False)
    return done.stdout.strip()


def test_hosts_have_own_address_hostname_and_etc(
    host_network: HostNetwork, three_hosts: list[Host]
) -> None:
    addresses = set()
    for host in three_hosts:
        out = host.run(["sh", "-c", "hostname; ip -4 -o addr show dev eth0; cat /etc/resolv.conf"])
        name, addr_line, *resolv = out.stdout.splitlines()
        assert name == host.name
        assert f" {host.address}/24 " in addr_line
        assert resolv == []  # no DNS server to wait on
        addresses.add(host.address)
    assert len(addresses) == 3
    assert socket.gethostname() not in {h.name for h in three_hosts}
    # Every host resolves every other by name, from its own /etc/hosts, at once.
    started = time.monotonic()
    names = "import socket; print(socket.gethostbyname('h3'), socket.gethostbyname('control'))"
    out = three_hosts[0].run([PY, "-c", names])
    assert out.stdout.split() == [three_hosts[2].address, host_network.address]
    assert time.monotonic() - started < 2


def test_tcp_between_hosts(three_hosts: list[Host]) -> None:
    h1, h2, h3 = three_hosts
    start_server(h1)
    assert connect(h2, "h1") == f"h1 {h2.address}"
    assert connect(h3, h1.address) == f"h1 {h3.address}"


def test_root_loopback_is_not_reachable_but_the_bridge_address_is(
    host_network: HostNetwork, three_hosts: list[Host]
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as private:
        private.setblocking(False)
        port = private.getsockname()[1]
        # 127.0.0.1 on a host is the host's own loopback: nothing listens there.
        assert connect(three_hosts[0], "127.0.0.1", port) == "ConnectionRefusedError"
        with pytest.raises(BlockingIOError):
            private.accept()
    # The control plane's address on the bridge is how hosts reach the server.
    with socket.create_server((host_network.address, 0)) as control:
        port = control.getsockname()[1]
        client = three_hosts[0].popen(
            [PY, "-c", CLIENT, "control", str(port), "2"], stdout=subprocess.DEVNULL
        )
        control.settimeout(5)
        conn, peer = control.accept()
        with conn:
            assert peer[0] == three_hosts[0].address
            conn.recv(10)
            conn.sendall(b"server")
        assert client.wait(timeout=5) == 0


def test_files_are_per_host(three_hosts: list[Host], tmp_path: Path) -> None:
    h1, h2, _ = three_hosts
    secret = tmp_path / "secret"  # the root namespace's temp dir, like a server's
    secret.write_text("root only")
    h1.run(["sh", "-c", f"echo mine > {DATA_DIR}/f; echo mine > /tmp/f; echo mine > /home/f"])
    assert h1.run(["cat", f"{DATA_DIR}/f"]).stdout == "mine\n"
    probe = ["sh", "-c", f"ls {DATA_DIR}/f /tmp/f /home/f {secret}"]
    missing = h2.run(probe, check=False)
    assert missing.returncode != 0 and missing.stdout == ""
    assert not Path(DATA_DIR, "f").exists() and not Path("/tmp/f").exists()
    assert h1.run(["test", "-e", str(secret)], check=False).returncode == 1
    # The machine's root file system is read-only on a host; its /etc is its own (an
    # overlay: accounts made there stay there).
    usr = h1.run(["sh", "-c", "touch /usr/flotilla-probe"], check=False)
    assert "Read-only file system" in usr.stderr
    h1.run(["sh", "-c", "touch /etc/flotilla-probe"])
    assert not Path("/etc/flotilla-probe").exists()
    assert h2.run(["test", "-e", "/etc/flotilla-probe"], check=False).returncode == 1
    h1.run(["sh", "-c", "echo '10.0.0.99 extra' >> /etc/hosts"])
    assert "extra" not in h2.run(["cat", "/etc/hosts"]).stdout
    assert "extra" not in Path("/etc/hosts").read_text()
    # Not isolated, said so in the module docstring: the machine's files stay readable
    # (its own temp directories excepted: a host has those privately).
    assert "root:" in h1.run(["cat", "/etc/passwd"]).stdout
    assert h1.run(["cat", flotilla.__file__]).stdout == Path(flotilla.__file__).read_text()


def test_the_machines_software_is_on_every_host_read_only(three_hosts: list[Host]) -> None:
    """The running Python and Flotilla's code are visible on a host even when they
    live under /tmp (a virtualenv made with mktemp, a CI clone), which a host has
    privately; a host cannot change them."""
    h1 = three_hosts[0]
    out = h1.run([PY, "-c", "import flotilla, sys; print(flotilla.__file__, sys.prefix)"])
    assert out.stdout.split() == [flotilla.__file__, sys.prefix]
    probe = Path(sys.prefix, "flotilla-host-write-probe")
    assert h1.run(["touch", str(probe)], check=False).returncode != 0
    assert not probe.exists()
    # The staging binds that carried them past the private /tmp are gone.
    assert ".machine" not in h1.run(["ls", "-A", str(DATA_DIR.parent)]).stdout.split()


def test_environment_is_not_inherited(
    three_hosts: list[Host], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOTILLA_PROBE_SECRET", "server only")
    env = three_hosts[0].run(["env"], env={"ROLE": "worker"}).stdout.splitlines()
    assert "ROLE=worker" in env and "HOSTNAME=h1" in env
    assert not [line for line in env if "FLOTILLA_PROBE" in line]
    assert three_hosts[0].run(["pwd"]).stdout.strip() == str(DATA_DIR)


def test_shared_home_is_shared_on_purpose(tmp_path: Path) -> None:
    require_hosts()
    home = tmp_path / "home"
    home.mkdir()
    with HostNetwork(shared_home=home) as net:
        a, b = net.add_host("a"), net.add_host("b")
        a.run(["sh", "-c", "echo from-a > /home/out"])
        assert b.run(["cat", "/home/out"]).stdout == "from-a\n"
        assert (home / "out").read_text() == "from-a\n"
        assert a.run(["ls", f"{DATA_DIR}"]).stdout == ""
    assert leftovers(net.prefix) == []


def test_link_down_cuts_the_host_off_and_link_up_restores_it(three_hosts: list[Host]) -> None:
    h1, h2, _ = three_hosts
    server = start_server(h1)
    assert connect(h2, "h1") == f"h1 {h2.address}"
    h1.link_down()
    assert connect(h2, "h1", timeout=1.0) in {"TimeoutError", "OSError"}
    assert server.poll() is None  # a partition, not a crash: it keeps running
    h1.link_up()
    deadline = time.monotonic() + 10
    while (answer := connect(h2, "h1", timeout=1.0)) != f"h1 {h2.address}":
        assert time.monotonic() < deadline, answer
        time.sleep(0.1)


def test_close_kills_everything_and_leaves_nothing() -> None:
    require_hosts()
    started = time.monotonic()
    net = HostNetwork()
    hosts = [net.add_host(name) for name in ("h1", "h2", "h3")]
    setup_s = time.monotonic() - started
    sleepers = [h.popen(["sleep", "600"]) for h in hosts]
    # A daemon that escaped: new session, parent gone; only its namespaces find it.
    out = hosts[0].run(["sh", "-c", "setsid sleep 600 >/dev/null 2>&1 & echo $!"])
    escaped = int(out.stdout)
    assert escaped in hosts[0].pids()
    prefix = net.prefix
    assert leftovers(prefix)  # the check below looks where the harness really leaves things
    started = time.monotonic()
    net.close()
    close_s = time.monotonic() - started
    assert leftovers(prefix) == []
    assert [p.returncode for p in sleepers] == [-9, -9, -9]
    deadline = time.monotonic() + 5
    while process_start_ticks(escaped) is not None:  # gone, or a zombie left to init
        assert time.monotonic() < deadline
        time.sleep(0.01)
    net.close()  # a second close is a no-op
    with pytest.raises(HostError):
        net.add_host("h4")
    with pytest.raises(HostError):
        hosts[0].run(["true"])
    print(f"3 hosts: setup {setup_s * 1000:.0f} ms, close {close_s * 1000:.0f} ms")


def test_cleans_up_when_the_body_raises() -> None:
    require_hosts()
    with pytest.raises(RuntimeError, match="test body failed"), HostNetwork() as net:
        host = net.add_host("h1")
        host.popen(["sleep", "600"])
        raise RuntimeError("test body failed")
    assert leftovers(net.prefix) == []


def test_remove_one_host(host_network: HostNetwork, three_hosts: list[Host]) -> None:
    h1, h2, h3 = three_hosts
    h2.popen(["sleep", "600"])
    h2.remove()
    h2.remove()
    assert [h.name for h in host_network.hosts.values()] == ["h1", "h3"]
    assert not [x for x in leftovers(host_network.prefix) if "h2" in x or "-v12" in x]
    assert "h2" not in h1.run(["cat", "/etc/hosts"]).stdout
    start_server(h3)
    assert connect(h1, "h3") == f"h3 {h1.address}"
    with pytest.raises(HostError, match="free hostname"):
        host_network.add_host("h1")
    with pytest.raises(HostError, match="free hostname"):
        host_network.add_host("Bad_Name")
