"""Prometheus view of running load balancers, for the server's /metrics (and
`serve.py`'s own). A custom collector: it reads `snapshot()` at scrape time, so the
data path keeps plain integer counters and pays nothing per connection.

    registry.register(LoadBalancerCollector(lambda: ctx.load_balancers.values()))

Every series is labelled `lb` (the config name), `listener` (the port) and, for
backend series, `backend` (`address:port`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flotilla.lb.runtime import BackendState
from flotilla.lb.snapshot import BackendSnapshot, LoadBalancerSnapshot

PREFIX = "flotilla_lb"
LISTENER = ["lb", "listener"]
BACKEND = ["lb", "listener", "backend"]

# (metric, help, snapshot field); counters get Prometheus' `_total` suffix
BACKEND_COUNTERS = (
    ("backend_connections", "Connections established to the backend", "total_connections"),
    ("backend_bytes_in", "Bytes forwarded from clients to the backend", "bytes_in"),
    ("backend_bytes_out", "Bytes forwarded from the backend to clients", "bytes_out"),
    ("backend_failed_connects", "Connections the backend refused or timed out", "failed_connects"),
    ("backend_health_checks", "Health probes run", "health_checks"),
    ("backend_health_checks_failed", "Health probes that failed", "health_checks_failed"),
)
LISTENER_COUNTERS = (
    ("listener_accepted_connections", "Connections accepted on the port", "accepted"),
    ("listener_refused_connections", "Connections refused by the allow-list", "refused"),
    ("listener_no_backend_connections", "Connections closed: no backend reachable", "no_backend"),
)


class Snapshotting(Protocol):
    def snapshot(self) -> LoadBalancerSnapshot: ...


Family = CounterMetricFamily | GaugeMetricFamily


class LoadBalancerCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[Snapshotting]]) -> None:
        self._source = source

    @classmethod
    def of(cls, *balancers: Snapshotting) -> LoadBalancerCollector:
        return cls(lambda: balancers)

    def collect(self) -> Iterator[Metric]:
        families = _families()
        for snap in [lb.snapshot() for lb in self._source()]:
            for listener in snap["listeners"]:
                where = [snap["name"], str(listener["port"])]
                fields: Mapping[str, Any] = listener
                for name, _, field in LISTENER_COUNTERS:
                    families[name].add_metric(where, fields[field])
                for backend in listener["backends"]:
                    _add_backend(families, [*where, backend["key"]], backend)
        yield from families.values()


def _families() -> dict[str, Family]:
    families: dict[str, Family] = {
        "backend_up": GaugeMetricFamily(
            f"{PREFIX}_backend_up", "1 when the backend takes new connections", labels=BACKEND
        ),
        "backend_state": GaugeMetricFamily(
            f"{PREFIX}_backend_state",
            "1 for the backend's current state (online, offline, draining)",
            labels=[*BACKEND, "state"],
        ),
        "backend_active_connections": GaugeMetricFamily(
            f"{PREFIX}_backend_active_connections", "Connections open now", labels=BACKEND
        ),
    }
    for name, help_text, _ in LISTENER_COUNTERS:
        families[name] = CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=LISTENER)
    for name, help_text, _ in BACKEND_COUNTERS:
        families[name] = CounterMetricFamily(f"{PREFIX}_{name}", help_text, labels=BACKEND)
    return families


def _add_backend(families: dict[str, Family], labels: list[str], backend: BackendSnapshot) -> None:
    state = backend["state"]
    families["backend_up"].add_metric(labels, 1.0 if state == BackendState.ONLINE else 0.0)
    for value in BackendState:
        families["backend_state"].add_metric([*labels, value.value], float(state == value))
    families["backend_active_connections"].add_metric(labels, backend["active_connections"])
    fields: Mapping[str, Any] = backend
    for name, _, field in BACKEND_COUNTERS:
        families[name].add_metric(labels, fields[field])
