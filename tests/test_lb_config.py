"""Config validation, the HAProxy rendering, the snapshot and Prometheus collector,
and `serve.py` end to end (stats endpoint and SIGHUP reload)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from flotilla.lb.collector import LoadBalancerCollector
from flotilla.lb.config import (
    HealthCheck,
    InvalidLoadBalancerConfig,
    LoadBalancerConfig,
    parse_config,
    read_config,
)
from flotilla.lb.haproxy import render
from flotilla.lb.serve import serve
from flotilla.lb.testing import TagBackend, connect, eventually, free_port, greet, rig


def raw(**listener: Any) -> dict[str, Any]:
    fields = {"port": 8080, "backends": [{"address": "10.0.0.5", "port": 80}], **listener}
    return {"name": "web", "listeners": [fields]}


def test_defaults_follow_the_contract() -> None:
    config = parse_config(raw())
    listener = config.listeners[0]
    assert listener.algorithm == "source_ip_hash"
    assert listener.allow == []
    assert listener.health_check == HealthCheck(
        timeout=5.0, interval=5.0, success_count=3, failure_count=2
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"health_check": {"interval": 0}}, "listeners[0].health_check.interval"),
        ({"health_check": {"timeout": -1}}, "listeners[0].health_check.timeout"),
        ({"health_check": {"failure_count": 0}}, "listeners[0].health_check.failure_count"),
        ({"health_check": {"success_count": 0}}, "listeners[0].health_check.success_count"),
        ({"health_check": {"retries": 3}}, "listeners[0].health_check.retries"),
        ({"port": 70000}, "listeners[0].port"),
        ({"allow": ["10.0.0.0/33"]}, "listeners[0].allow"),
        ({"algorithm": "random"}, "listeners[0].algorithm"),
        ({"backends": [{"address": "db.internal", "port": 1}]}, "listeners[0].backends[0].address"),
        ({"backends": [{"address": "10.0.0.5", "port": 80}] * 2}, "listeners[0].backends"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidLoadBalancerConfig) as caught:
        parse_config(raw(**change))
    assert [p.path for p in caught.value.problems] == [field]
    assert field in caught.value.message
    assert caught.value.status == 422


def test_two_listeners_on_one_port_are_refused() -> None:
    data = raw()
    data["listeners"] *= 2
    with pytest.raises(InvalidLoadBalancerConfig, match="port 8080 has two listeners"):
        parse_config(data)


def test_read_config_takes_yaml_and_json(tmp_path: Path) -> None:
    (tmp_path / "lb.yaml").write_text(yaml.safe_dump(raw(allow=["10.1.2.3/8"])))
    (tmp_path / "lb.json").write_text(json.dumps(raw()))
    assert read_config(tmp_path / "lb.yaml").listeners[0].allow == ["10.0.0.0/8"]
    assert read_config(tmp_path / "lb.json") == parse_config(raw())


def test_haproxy_rendering_maps_every_field(tmp_path: Path) -> None:
    config = parse_config(
        raw(
            allow=["10.0.0.0/8", "192.168.1.7/32"],
            health_check={"timeout": 1.5, "interval": 2, "success_count": 4, "failure_count": 3},
        )
    )
    text = render(config, stats_socket="/run/lb.sock")
    for line in (
        "mode tcp",
        "bind 0.0.0.0:8080",
        "balance source",
        "hash-type consistent",
        "acl allowed src 10.0.0.0/8 192.168.1.7/32",
        "tcp-request connection reject unless allowed",
        "timeout check 1500ms",
        "default-server check inter 2000ms fall 3 rise 4",
        "server 10.0.0.5:80 10.0.0.5:80",
        "stats socket /run/lb.sock",
    ):
        assert line in text
    rr = parse_config(raw(algorithm="round_robin", allow=[]))
    assert "balance roundrobin" in render(rr)
    assert "acl" not in render(rr)
    assert "balance leastconn" in render(parse_config(raw(algorithm="least_connections")))
    if shutil.which("haproxy"):
        (tmp_path / "h.cfg").write_text(render(config))
        check = subprocess.run(
            ["haproxy", "-c", "-f", str(tmp_path / "h.cfg")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr


async def test_snapshot_and_collector_carry_the_counters() -> None:
    async with rig("a", allow=["127.0.0.1/32"]) as r:
        for _ in range(3):
            assert await greet(r.port) == "a"
        reader, writer = await connect(r.port, "127.0.0.3")
        with pytest.raises(ConnectionResetError):
            if await asyncio.wait_for(reader.read(), 5) == b"":
                raise ConnectionResetError  # closed rather than reset: same verdict
        writer.close()
        await eventually(lambda: r.runtime(r.backends[0]).active == 0, what="connections to end")

        snap = r.lb.snapshot()
        listener = snap["listeners"][0]
        backend = listener["backends"][0]
        assert (listener["accepted"], listener["refused"]) == (4, 1)
        assert backend["state"] == "online"
        assert backend["total_connections"] == 3
        assert backend["bytes_in"] == 0  # greet sends nothing
        assert backend["bytes_out"] == 3 * len(b"a\nbye 0\n")
        assert backend["health_checks"] == len(backend["health_history"]) >= 1
        json.dumps(snap)  # plain data all the way down

        registry = CollectorRegistry()
        registry.register(LoadBalancerCollector.of(r.lb))
        where = {"lb": "test", "listener": str(r.port)}
        at = {**where, "backend": backend["key"]}

        def sample(name: str, labels: dict[str, str]) -> float | None:
            return registry.get_sample_value(f"flotilla_lb_{name}", labels)

        assert sample("listener_accepted_connections_total", where) == 4
        assert sample("listener_refused_connections_total", where) == 1
        assert sample("backend_connections_total", at) == 3
        assert sample("backend_bytes_out_total", at) == backend["bytes_out"]
        assert sample("backend_up", at) == 1
        assert sample("backend_state", {**at, "state": "online"}) == 1
        assert sample("backend_state", {**at, "state": "offline"}) == 0
        assert sample("backend_active_connections", at) == 0
        assert sample("backend_failed_connects_total", at) == 0


async def http_get(port: int, path: str) -> tuple[str, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    length = int(head.lower().split("content-length: ")[1].split("\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return head.split("\r\n")[0], body


async def test_serve_answers_stats_and_reloads_on_sighup(tmp_path: Path) -> None:
    a, b = await TagBackend("a").start(), await TagBackend("b").start()
    port, stats_port = free_port(), free_port()
    path = tmp_path / "lb.yaml"

    def write(backend: TagBackend) -> None:
        listener = {"port": port, "host": "127.0.0.1", "backends": [backend.backend.model_dump()]}
        config = LoadBalancerConfig.model_validate({"name": "edge", "listeners": [listener]})
        path.write_text(yaml.safe_dump(config.model_dump(mode="json")))

    write(a)
    stop = asyncio.Event()
    task = asyncio.create_task(serve(path, stats_port=stats_port, stop=stop))
    try:
        status = ""
        while status != "HTTP/1.1 200 OK":
            await asyncio.sleep(0.02)
            try:
                status, body = await http_get(stats_port, "/metrics")
            except ConnectionRefusedError:
                assert not task.done(), task.exception()
        assert await greet(port) == "a"
        status, body = await http_get(stats_port, "/metrics")
        assert f'flotilla_lb_backend_connections_total{{backend="{a.backend.key}"' in body.decode()
        status, body = await http_get(stats_port, "/stats")
        assert json.loads(body)["listeners"][0]["accepted"] == 1
        assert (await http_get(stats_port, "/nope"))[0] == "HTTP/1.1 404 Not Found"

        write(b)
        # serve() installed its handler; never send SIGHUP without one (it would end pytest)
        assert signal.getsignal(signal.SIGHUP) not in (signal.SIG_DFL, signal.SIG_IGN, None)
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(200):
            if await greet(port) == "b":
                break
            await asyncio.sleep(0.02)
        assert await greet(port) == "b"
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await a.stop()
        await b.stop()
