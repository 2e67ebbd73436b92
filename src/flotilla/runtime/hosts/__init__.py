"""Several real hosts on one machine: network namespaces on a bridge, each with its
own address, hostname, /etc/hosts, empty resolv.conf and private disk.

Used by the multi-host tests of issue 12 (agents, SSH fleets, Slurm and node failures
across real network boundaries) and meant for the `sim` cloud when the server runs as
root, where each sim instance can be a host of its own. Synchronous: a few ms per
command; asyncio callers use `asyncio.to_thread` or `Host.argv_on_host()`.

What is isolated, per host:
- the network: its own namespace, interface `eth0` with one address on the bridge,
  its own loopback (127.0.0.1 of the root namespace is not reachable from a host),
  a default route via the bridge's address (the control plane); `link_down()` cuts
  it off like a pulled cable;
- the hostname (UTS namespace), /etc/hosts (all hosts and `control`), an empty
  /etc/resolv.conf (no DNS, so nothing waits on resolver time-outs), /etc/hostname;
- its files: a private tmpfs for its disk (/srv, with the data dir /srv/flotilla),
  /tmp, /var/tmp, /run and /dev/shm, and /home (private, or the `shared_home` bound in
  on purpose); the rest of the machine's root file system is read-only inside it.

What is not: the machine's files are still readable from a host (read-only, but the
server's data dir on the root file system included) — hiding them from tenants is the
isolation item of issue 12, not this harness; /proc, /sys (cgroups included) and /dev
are the machine's (no PID namespace: host processes see every process, and ours see
theirs); processes on hosts run as the machine's root, so none of this is a security
boundary against them (they could remount /), only against accidents and for realism.
"""

from flotilla.runtime.hosts.commands import HostError, available
from flotilla.runtime.hosts.host import DATA_DIR, Host
from flotilla.runtime.hosts.network import HostNetwork

__all__ = ["DATA_DIR", "Host", "HostError", "HostNetwork", "available"]
