"""The simulated GPU cloud: offers and prices, InfiniBand slice checks, provisioning,
spot notices, injected failures, stock-outs — all on a fake clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from flotilla.compute.provider import CapacityError, EventKind, InstanceState, ProviderError
from flotilla.compute.sim.provider import IbNetwork, SimConfig, SimProvider

T0 = datetime(2026, 11, 1, tzinfo=UTC)
H100 = "h100-80gb-sxm-ib.8x"


def small(**overrides: object) -> SimProvider:
    config = SimConfig(
        networks=[IbNetwork("east-ib", "us-east1", H100, slices=8 * 8, partitions=2)],
        standalone={("l40s-48gb.1x", "us-east1"): 2},
        provisioning_delay=90,
    )
    for key, value in overrides.items():
        setattr(config, key, value)
    return SimProvider(config)


def test_offers_carry_catalog_prices_and_capacity() -> None:
    offers = {(o.instance_type, o.region): o for o in SimProvider().offers(region="us-east1")}
    h100 = offers[(H100, "us-east1")]
    assert (h100.on_demand_per_hour, h100.spot_per_hour, h100.price_published) == (31.2, 12.8, True)
    assert offers[("h200-141gb-sxm-ib.8x", "us-east1")].spot_per_hour is None
    assert offers[("mi300x-192gb-ib.8x", "us-east1")].on_demand_per_hour == 3.45 * 8
    assert not offers[("b200-180gb-sxm-ib.8x", "us-east1")].price_published
    assert all(o.gpu_type == "H100" for o in SimProvider().offers(gpu_type="h100"))


def test_cluster_needs_one_partition_and_fails_fast() -> None:
    provider = small()  # 8 nodes in two partitions of 4
    with pytest.raises(CapacityError, match="no InfiniBand partition in us-east1 has 40 free"):
        provider.create_instances("r1", H100, "us-east1", 5, False, True, T0)
    assert provider.capacity(H100, "us-east1") == 8  # nothing was taken
    cluster = provider.create_instances("r2", H100, "us-east1", 4, False, True, T0)
    assert len({i.node.partition for i in cluster}) == 1
    assert provider.capacity(H100, "us-east1") == 4
    assert (
        provider.create_instances("r2", H100, "us-east1", 4, False, True, T0) == cluster
    )  # idempotent
    loose = provider.create_instances("r3", H100, "us-east1", 4, False, False, T0)
    assert len(loose) == 4 and provider.capacity(H100, "us-east1") == 0
    with pytest.raises(ProviderError, match="unknown instance type"):
        provider.create_instances("r4", "h100-x", "us-east1", 1, False, False, T0)
    with pytest.raises(ProviderError, match="unknown region"):
        provider.create_instances("r5", H100, "mars-1", 1, False, False, T0)


def test_provisioning_delay_then_ready_and_terminate_frees_capacity() -> None:
    provider = small()
    (instance,) = provider.create_instances("r", H100, "us-east1", 1, False, False, T0)
    assert instance.state == InstanceState.PROVISIONING
    assert provider.poll(T0 + timedelta(seconds=89)) == []
    (ready,) = provider.poll(T0 + timedelta(seconds=90))
    assert ready.kind == EventKind.READY and instance.state == InstanceState.READY
    provider.terminate(instance.id, T0)
    provider.terminate(instance.id, T0)  # idempotent
    assert provider.capacity(H100, "us-east1") == 8


def test_spot_notice_comes_seven_days_ahead() -> None:
    provider = small(spot_interruption_mtbi=3600.0)
    (instance,) = provider.create_instances("r", H100, "us-east1", 1, True, False, T0)
    assert instance.price_per_hour == 12.8
    events = provider.poll(T0 + timedelta(days=30))
    kinds = [e.kind for e in events]
    assert kinds == [EventKind.READY, EventKind.INTERRUPTION_NOTICE, EventKind.TERMINATED]
    notice, end = events[1], events[2]
    assert notice.deadline == end.at and end.at - notice.at == timedelta(days=7)
    assert instance.state == InstanceState.TERMINATED


def test_injected_failures_follow_the_mtbi_and_stockouts() -> None:
    provider = small(node_mtbi=3600.0, seed=7)
    instances = provider.create_instances("r", H100, "us-east1", 8, False, False, T0)
    events = provider.poll(T0 + timedelta(days=10))
    failures = [e for e in events if e.kind == EventKind.FAILED]
    assert len(failures) == 8 and all(i.state == InstanceState.FAILED for i in instances)
    mean_hours = sum((e.at - T0).total_seconds() for e in failures) / len(failures) / 3600
    assert 0.2 < mean_hours < 4  # exponential with a one-hour mean, eight draws
    out = small(stockouts={(H100, "us-east1")})
    assert out.capacity(H100, "us-east1") == 0
    with pytest.raises(CapacityError, match="out of stock"):
        out.create_instances("r", H100, "us-east1", 1, False, False, T0)
