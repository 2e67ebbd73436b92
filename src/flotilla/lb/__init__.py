"""Flotilla's L4 (TCP) load balancer data plane: a pure asyncio proxy (uvloop when
installed) with source-IP consistent hashing, round robin or least connections, a
source allow-list, TCP health checks and live reconfiguration.

No database, no FastAPI: the server's `load_balancer` resource (and `flo lb serve`,
through `serve.run_forever`) drive it with a `LoadBalancerConfig`:

    lb = LoadBalancer(config)
    await lb.start()
    await lb.apply(new_config)      # live, established connections untouched
    lb.snapshot()                   # plain dicts: states, connections, bytes, health
    registry.register(LoadBalancerCollector.of(lb))   # Prometheus
    await lb.drain(10) / await lb.stop()
"""

from flotilla.lb.balancer import ListenError, LoadBalancer, LoadBalancerError
from flotilla.lb.collector import LoadBalancerCollector
from flotilla.lb.config import (
    Algorithm,
    Backend,
    HealthCheck,
    InvalidLoadBalancerConfig,
    Listener,
    LoadBalancerConfig,
    parse_config,
    read_config,
)
from flotilla.lb.runtime import BackendState
from flotilla.lb.snapshot import LoadBalancerSnapshot

__all__ = [
    "Algorithm",
    "Backend",
    "BackendState",
    "HealthCheck",
    "InvalidLoadBalancerConfig",
    "ListenError",
    "Listener",
    "LoadBalancer",
    "LoadBalancerCollector",
    "LoadBalancerConfig",
    "LoadBalancerError",
    "LoadBalancerSnapshot",
    "parse_config",
    "read_config",
]
