"""`flo lb list|describe|delete|serve`, `flo deployments` and `flo deployment
describe|delete`, in process (typer's CliRunner) against a real server on loopback;
`flo lb serve` as its own process, the way it is meant to run."""

from __future__ import annotations

import json
import socket
import socketserver
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner, Result

from flotilla.cli.main import app
from tests.factories import (
    ADMIN_TOKEN,
    AUTH,
    TASK_PYTHON,
    ServerProcess,
    cleanup_data_dir,
    free_port,
    wait_sync,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

REPLICA = Path(__file__).resolve().parents[1] / "examples" / "http_replica.py"
QUICK_CHECKS = {"interval": 0.2, "timeout": 0.5}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir = tmp_path_factory.mktemp("serving-cli") / "data"
    process = ServerProcess(data_dir).start()
    yield process
    process.stop()
    cleanup_data_dir(data_dir)


class Greeter(socketserver.BaseRequestHandler):
    """Says `hello`, then echoes: a round trip shows the bytes went both ways."""

    def handle(self) -> None:
        try:
            self.request.sendall(b"hello\n")
            while data := self.request.recv(65536):
                self.request.sendall(data)
        except OSError:
            pass  # a health probe hangs up at once


@pytest.fixture
def backend() -> Iterator[int]:
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Greeter)
    tcp.daemon_threads = True
    thread = threading.Thread(target=tcp.serve_forever, daemon=True)
    thread.start()
    yield int(tcp.server_address[1])
    tcp.shutdown()
    tcp.server_close()
    thread.join(5)


def round_trip(port: int) -> bool:
    """Whether a connection to `port` reaches the greeter and is echoed."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"ping")
            received = b""
            while len(received) < len(b"hello\nping"):
                chunk = conn.recv(1024)
                if not chunk:
                    break
                received += chunk
            return received == b"hello\nping"
    except OSError:
        return False


def flo(server: ServerProcess | None, *args: str, ok: bool = True) -> Result:
    # Wide enough that rich does not wrap the table cells the assertions look for.
    env = {"COLUMNS": "200"}
    if server is not None:
        env.update({"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": ADMIN_TOKEN})
    result = CliRunner().invoke(app, list(args), env=env)
    if ok:
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return result


def flo_json(server: ServerProcess, *args: str) -> Any:
    return json.loads(flo(server, *args, "--json").stdout)


def failed(result: Result, *words: str) -> None:
    """Exit 1 with one red error line naming `words`."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def write_yaml(path: Path, data: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_load_balancer_list_describe_delete(
    server: ServerProcess, backend: int, tmp_path: Path
) -> None:
    port = free_port()
    listener = {
        "port": port,
        "host": "127.0.0.1",
        "backends": [f"127.0.0.1:{backend}"],
        "allow": ["127.0.0.0/8"],
        "health_check": QUICK_CHECKS,
    }
    recipe = {"type": "load_balancer", "spec": {"name": "edge", "listeners": [listener]}}
    applied = flo(server, "apply", write_yaml(tmp_path / "lb.yaml", recipe))
    assert "applied load_balancer edge" in applied.stdout
    wait_sync(lambda: round_trip(port), timeout=10, what="traffic through the listener")

    def probed() -> dict[str, Any] | None:
        (lb,) = flo_json(server, "lb", "list")
        backends = lb["listeners"][0]["backends"] if lb["listeners"] else []
        return lb if backends and backends[0]["health_history"] else None

    lb = wait_sync(probed, timeout=10, what="a health probe")
    assert lb["name"] == "edge" and lb["status"] == "serving" and lb["error"] is None
    (seen,) = lb["listeners"][0]["backends"]
    assert seen["key"] == f"127.0.0.1:{backend}" and seen["state"] == "online"
    assert seen["total_connections"] >= 1 and seen["bytes_in"] >= 4

    listed = flo(server, "lb", "list").stdout
    assert "edge" in listed and "serving" in listed and f"{port}→1 backend (1 online)" in listed

    described = flo(server, "lb", "describe", "edge").stdout
    assert f"listener 127.0.0.1:{port}: source_ip_hash, allow 127.0.0.0/8" in described
    assert f"127.0.0.1:{backend}" in described and "online" in described
    assert "recent health probes" in described and " ok " in described
    detail = flo_json(server, "lb", "describe", "edge")
    assert detail["listeners"][0]["accepted"] >= 1

    deleted = flo(server, "lb", "delete", "edge", "--yes")
    assert deleted.stdout.startswith("deleted load balancer edge")
    wait_sync(lambda: not round_trip(port), timeout=15, what="the listener to close")
    assert flo_json(server, "lb", "list") == []
    failed(flo(server, "lb", "describe", "edge", ok=False), "load_balancer 'edge' not found")
    failed(flo(server, "lb", "delete", "edge", "--yes", ok=False), "not found")


def test_deployment_list_describe_delete(server: ServerProcess, tmp_path: Path) -> None:
    spec = {
        "name": "hello",
        "command": f"{TASK_PYTHON} {REPLICA}",
        "scale": 1,
        "health_check": QUICK_CHECKS,
        "start_ssh": True,
    }
    applied = flo(
        server, "apply", write_yaml(tmp_path / "d.yaml", {"type": "deployment", "spec": spec})
    )
    assert "applied deployment hello" in applied.stdout

    def ready() -> dict[str, Any] | None:
        (d,) = flo_json(server, "deployments")
        live = [r for r in d["replicas"] if r["ready"] and not r["stopping"]]
        return d if len(live) == 1 and d["desired_replicas"] == 1 else None

    deployment = wait_sync(ready, timeout=30, what="one ready replica")
    endpoint = f"{server.url}/d/~admin/hello/"
    assert deployment["endpoints"]["http"] == endpoint
    answer = httpx.get(endpoint, headers=AUTH, timeout=10)
    assert answer.status_code == 200 and answer.text.startswith("hello from"), answer.text

    listed = flo(server, "deployments").stdout
    assert "hello" in listed and "1/1" in listed and endpoint in listed
    described = flo(server, "deployment", "describe", "hello").stdout
    assert "deployment hello (owner admin), version 1: 1/1 replicas ready" in described
    assert f"http  {endpoint}" in described and "tcp " in described
    assert "load balancer: serving" in described and "online" in described
    assert "ssh   flo ssh admin/hello" in described
    (replica,) = flo_json(server, "deployment", "describe", "hello")["replicas"]
    assert f"{replica['address']}:{replica['ports']['8000']}" in described

    deleted = flo(server, "deployment", "delete", "hello", "--yes")
    assert deleted.stdout.startswith("deleted deployment hello")
    assert flo_json(server, "deployments") == []
    failed(flo(server, "deployment", "describe", "hello", ok=False), "not found")


def test_lb_serve_runs_a_config_standalone(backend: int, tmp_path: Path) -> None:
    port, stats = free_port(), free_port()
    listener = {
        "port": port,
        "host": "127.0.0.1",
        "backends": [{"address": "127.0.0.1", "port": backend}],
        "health_check": QUICK_CHECKS,
    }
    config = write_yaml(tmp_path / "solo.yaml", {"name": "solo", "listeners": [listener]})
    log = tmp_path / "lb.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["flo", "lb", "serve", config, "--stats-port", str(stats)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        wait_sync(lambda: round_trip(port), timeout=15, what="the standalone listener")
        snapshot = httpx.get(f"http://127.0.0.1:{stats}/stats", timeout=5).json()
        assert snapshot["name"] == "solo"
        assert snapshot["listeners"][0]["backends"][0]["total_connections"] >= 1
    finally:
        proc.terminate()
        code = proc.wait(15)
    assert code == 0, log.read_text()
    assert f"serving load balancer solo on 127.0.0.1:{port}" in log.read_text()
    assert not round_trip(port)


def test_lb_serve_refuses_a_bad_config_in_red(tmp_path: Path) -> None:
    failed(flo(None, "lb", "serve", str(tmp_path / "missing.yaml"), ok=False), "cannot read")
    bad = write_yaml(tmp_path / "bad.yaml", {"name": "bad", "listeners": [{"port": 0}]})
    result = flo(None, "lb", "serve", bad, ok=False)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {bad}: listeners[0].port"), result.stderr
