"""`HostNetwork`: a bridge in the root namespace carrying the control plane's address
(10.231.X.1/24, X free on this machine), and the hosts plugged into it.

Every name it creates starts with one short prefix of its own (`flo` + 4 hex: the
bridge, veths, network namespaces, mounts, its scratch dir), so that its teardown and
anyone checking for leftovers can tell its things from everybody else's; `close()`
removes all of it and is idempotent."""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from flotilla.runtime.hosts.build import setup_host, teardown
from flotilla.runtime.hosts.commands import HostError, available, mounted_paths, run_command
from flotilla.runtime.hosts.host import DATA_ROOT, Host, HostLayout

BASE = "10.231"
FIRST_HOST = 11  # .1 is the control plane; leave a few for later services
CONTROL_NAME = "control"
# Held while a network picks its prefix and subnet and makes its bridge with them,
# so that two networks made at once (parallel tests, two processes) cannot pick the
# same ones. An empty file, shared by all processes, left in place.
LOCK_FILE = Path("/run/lock/flotilla-hosts.lock")


class HostNetwork:
    """A bridge plus hosts on it. Creating it makes the bridge; `add_host()` the hosts.

    `shared_home`: a directory bind-mounted read-write as /home on every host (what a
    cluster shares over NFS); without it each host has a private /home.
    `readonly_root`: the machine's root file system is read-only inside the hosts."""

    def __init__(
        self,
        *,
        scratch_parent: Path | None = None,
        shared_home: Path | None = None,
        readonly_root: bool = True,
    ) -> None:
        ok, why = available(DATA_ROOT)
        if not ok:
            raise HostError(["flotilla hosts"], why)
        if shared_home is not None and not shared_home.is_dir():
            raise HostError(["mount", "--bind", str(shared_home)], "not a directory")
        self.shared_home = shared_home
        self.readonly_root = readonly_root
        self.hosts: dict[str, Host] = {}
        self._next_octet = FIRST_HOST
        self._closed = False
        self.subnet = ipaddress.IPv4Network(f"{BASE}.0.0/24")  # replaced below
        with _names_lock():  # until the bridge holds both, others see them as free
            self.prefix = _free_prefix()
            self.bridge = f"{self.prefix}-br"
            self.scratch = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-", dir=scratch_parent))
            self._ns_dir = self.scratch / "ns"
            try:
                self._start()
            except BaseException:
                self.close()
                raise

    @property
    def address(self) -> str:
        """The control plane's address on the bridge, reachable from every host."""
        return str(self.subnet.network_address + 1)

    def _start(self) -> None:
        # Namespace pins must sit on a private mount: on a shared one the kernel
        # refuses them (they could propagate into the namespace they pin).
        self._ns_dir.mkdir()
        run_command(["mount", "--bind", str(self._ns_dir), str(self._ns_dir)])
        run_command(["mount", "--make-private", str(self._ns_dir)])
        run_command(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.subnet = _free_subnet()
        run_command(["ip", "addr", "add", f"{self.address}/24", "dev", self.bridge])
        run_command(["ip", "link", "set", self.bridge, "up"])

    def add_host(self, name: str) -> Host:
        """Create and start a host called `name` (a hostname label) at the next address."""
        if self._closed:
            raise HostError(["add_host", name], "the network is closed")
        if not _is_label(name) or name == CONTROL_NAME or name in self.hosts:
            raise HostError(["add_host", name], "not a free hostname label")
        octet = self._next_octet
        if octet > 254:
            raise HostError(["add_host", name], "no address left on the subnet")
        self._next_octet += 1
        lay = HostLayout(
            name=name,
            address=str(self.subnet.network_address + octet),
            prefix_len=self.subnet.prefixlen,
            gateway=self.address,
            netns=f"{self.prefix}-{name}",
            veth=f"{self.prefix}-v{octet}",
            mnt_pin=self._ns_dir / f"{name}.mnt",
            uts_pin=self._ns_dir / f"{name}.uts",
            etc_dir=self.scratch / "etc" / name,
        )
        host = Host(lay, self.bridge, self._remove)
        self.hosts[name] = host
        try:
            lay.etc_dir.mkdir(parents=True)
            (lay.etc_dir / "resolv.conf").write_text("")  # no DNS: no resolver time-outs
            (lay.etc_dir / "hostname").write_text(f"{name}\n")
            self._write_hosts_files()
            setup_host(lay, self.bridge, self.shared_home, self.readonly_root)
        except BaseException:
            with contextlib.suppress(HostError):
                self._remove(host)
            raise
        return host

    def _write_hosts_files(self) -> None:
        """Every host's /etc/hosts names all hosts and the control plane.

        Rewritten in place (same inode): each is bind-mounted into its host, and a
        replaced file would not be seen through the bind."""
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        lines.append(f"{self.address} {CONTROL_NAME}")
        lines += [f"{h.address} {h.name}" for h in self.hosts.values()]
        text = "\n".join(lines) + "\n"
        for host in self.hosts.values():
            path = host.layout.etc_dir / "hosts"
            with path.open("w") as f:
                f.write(text)

    def _remove(self, host: Host) -> None:
        host.kill_children()
        errors = teardown([host.layout])
        errors += _unreaped(host)
        host.removed = True
        self.hosts.pop(host.name, None)
        shutil.rmtree(host.layout.etc_dir, ignore_errors=True)
        if not self._closed:
            self._write_hosts_files()
        if errors:
            raise errors[0]

    def close(self) -> None:
        """Kill every process on the hosts, delete the hosts, the bridge, the mounts and
        the scratch dir. Tries every step even when one fails, then raises the first
        failure. A second call does nothing. Not to be called while another thread
        starts processes on the hosts."""
        if self._closed:
            return
        self._closed = True
        hosts = list(self.hosts.values())
        for host in hosts:
            host.kill_children()
        errors = teardown([h.layout for h in hosts], bridge=self.bridge, mounts=[self._ns_dir])
        for host in hosts:
            errors += _unreaped(host)
            host.removed = True
        self.hosts.clear()
        # Kept only while something is still mounted in it (rmtree would fail there).
        if not any(m.startswith(f"{self.scratch}/") for m in mounted_paths()):
            shutil.rmtree(self.scratch, ignore_errors=True)
        if errors:
            raise errors[0]

    def __enter__(self) -> HostNetwork:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _unreaped(host: Host) -> list[HostError]:
    left = host.reap()
    if not left:
        return []
    return [HostError(["kill", "-9", *map(str, left)], f"not reaped on {host.name}")]


def _is_label(name: str) -> bool:
    ok = all(c.isascii() and (c.isalnum() or c == "-") for c in name)
    return ok and 0 < len(name) <= 40 and name[0] != "-" and name[-1] != "-" and name.islower()


def _free_prefix() -> str:
    """`flo` + 4 hex that no interface or netns name on this machine starts with."""
    taken = [p.name for p in Path("/sys/class/net").iterdir()]
    netns = Path("/run/netns")
    if netns.is_dir():
        taken += [p.name for p in netns.iterdir()]
    while True:
        prefix = f"flo{secrets.token_hex(2)}"
        if not any(name.startswith(prefix) for name in taken):
            return prefix


@contextlib.contextmanager
def _names_lock() -> Iterator[None]:
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with LOCK_FILE.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _free_subnet() -> ipaddress.IPv4Network:
    """The first 10.231.X.0/24 that no address or route on this machine overlaps."""
    used: list[ipaddress.IPv4Network] = []
    for link in json.loads(run_command(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for info in link.get("addr_info", []):
            used.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", False))
    for route in json.loads(run_command(["ip", "-j", "-4", "route", "show", "table", "all"])):
        dst = route.get("dst", "default")
        if dst != "default":
            used.append(ipaddress.IPv4Network(dst, strict=False))
    for x in range(256):
        candidate = ipaddress.IPv4Network(f"{BASE}.{x}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise HostError(["ip", "addr"], f"no free /24 left in {BASE}.0.0/16")
