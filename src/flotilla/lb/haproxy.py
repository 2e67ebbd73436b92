"""Render a `LoadBalancerConfig` as an HAProxy configuration with the same meaning:
`mode tcp`, the balancing algorithm (`balance source` with `hash-type consistent`,
`roundrobin`, `leastconn`), TCP checks (`check inter/fall/rise`, `timeout check`)
from the listener's HealthCheck, the allow-list as an ACL with `tcp-request
connection reject`, and a retry on another server when one refuses (`option
redispatch`), like Flotilla's data plane. Used by `bench/lb.py`; also a way out
for operators who prefer HAProxy. Pure: returns text.
"""

from __future__ import annotations

from flotilla.lb.config import Algorithm, Backend, Listener, LoadBalancerConfig

BALANCE = {
    Algorithm.SOURCE_IP_HASH: "source\n    hash-type consistent",
    Algorithm.ROUND_ROBIN: "roundrobin",
    Algorithm.LEAST_CONNECTIONS: "leastconn",
}


def ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def server_name(backend: Backend) -> str:
    """The `server` name HAProxy reports (stats `svname`): the backend's key,
    `address:port`, without the brackets HAProxy does not allow in names."""
    return backend.key.replace("[", "").replace("]", "")


def render(
    config: LoadBalancerConfig,
    *,
    stats_socket: str | None = None,
    nbthread: int | None = None,
    maxconn: int | None = None,
    idle_timeout: float = 3600.0,
) -> str:
    """`maxconn` and `nbthread` default to HAProxy's own choice (from the fd limit
    and the CPUs)."""
    lines = ["global"]
    if maxconn is not None:
        lines.append(f"    maxconn {maxconn}")
    if nbthread is not None:
        lines.append(f"    nbthread {nbthread}")
    if stats_socket is not None:
        lines.append(f"    stats socket {stats_socket} mode 600 level admin")
    lines += [
        "",
        "defaults",
        "    mode tcp",
        f"    timeout client {ms(idle_timeout)}",
        f"    timeout server {ms(idle_timeout)}",
        "    timeout connect 5s",
        "    retries 2",
        "    option redispatch 1",
        "",
    ]
    for listener in config.listeners:
        lines += _listener(config.name, listener)
    return "\n".join(lines) + "\n"


def _listener(name: str, listener: Listener) -> list[str]:
    section = f"{name}_{listener.port}"
    host = f"[{listener.host}]" if ":" in listener.host else listener.host
    check = listener.health_check
    lines = [f"frontend {section}", f"    bind {host}:{listener.port}"]
    if listener.allow:
        lines.append(f"    acl allowed src {' '.join(listener.allow)}")
        lines.append("    tcp-request connection reject unless allowed")
    lines += [
        f"    default_backend {section}",
        "",
        f"backend {section}",
        f"    balance {BALANCE[listener.algorithm]}",
        # A TCP check's connect is bounded by min(timeout connect, inter).
        f"    timeout connect {ms(check.timeout)}",
        f"    timeout check {ms(check.timeout)}",
        f"    default-server check inter {ms(check.interval)} "
        f"fall {check.failure_count} rise {check.success_count}",
    ]
    for backend in listener.backends:
        address = f"ipv6@{backend.address}" if ":" in backend.address else backend.address
        lines.append(f"    server {server_name(backend)} {address}:{backend.port}")
    lines.append("")
    return lines
