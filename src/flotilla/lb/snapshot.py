"""Plain-dict view of a running load balancer's counters and health, for the API,
`serve.py`'s `/stats` endpoint and the Prometheus collector."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from flotilla.lb.runtime import BackendRuntime, ListenerRuntime


class ProbeSnapshot(TypedDict):
    at: float
    ok: bool
    state: str  # after this probe
    error: str | None


class TransitionSnapshot(TypedDict):
    at: float
    old: str
    new: str


class BackendSnapshot(TypedDict):
    key: str
    address: str
    port: int
    state: str  # online | offline | draining
    active_connections: int
    total_connections: int
    bytes_in: int  # client → backend
    bytes_out: int  # backend → client
    failed_connects: int
    health_checks: int
    health_checks_failed: int
    health_history: list[ProbeSnapshot]
    transitions: list[TransitionSnapshot]


class ListenerSnapshot(TypedDict):
    host: str
    port: int
    algorithm: str
    draining: bool
    accepted: int
    refused: int  # by the allow-list
    no_backend: int
    active_connections: int
    backends: list[BackendSnapshot]


class LoadBalancerSnapshot(TypedDict):
    name: str
    listeners: list[ListenerSnapshot]


def backend_snapshot(backend: BackendRuntime) -> BackendSnapshot:
    health = backend.health
    return {
        "key": backend.key,
        "address": backend.address,
        "port": backend.port,
        "state": backend.state.value,
        "active_connections": backend.active,
        "total_connections": backend.total,
        "bytes_in": backend.bytes_in,
        "bytes_out": backend.bytes_out,
        "failed_connects": backend.failed_connects,
        "health_checks": health.probes,
        "health_checks_failed": health.probes_failed,
        "health_history": [
            {"at": p.at, "ok": p.ok, "state": p.state.value, "error": p.error}
            for p in list(health.history)
        ],
        "transitions": [
            {"at": t.at, "old": t.old.value, "new": t.new.value} for t in list(health.transitions)
        ],
    }


def listener_snapshot(listener: ListenerRuntime) -> ListenerSnapshot:
    config = listener.config
    return {
        "host": config.host,
        "port": config.port,
        "algorithm": config.algorithm.value,
        "draining": listener.draining,
        "accepted": listener.accepted,
        "refused": listener.refused,
        "no_backend": listener.no_backend,
        "active_connections": len(listener.connections),
        "backends": [backend_snapshot(b) for b in list(listener.backends.values())],
    }


def balancer_snapshot(name: str, listeners: Iterable[ListenerRuntime]) -> LoadBalancerSnapshot:
    return {"name": name, "listeners": [listener_snapshot(li) for li in listeners]}
