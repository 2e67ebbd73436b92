"""L4 load balancer benchmark: Flotilla's data plane (`flotilla.lb`, uvloop, its own
process) against HAProxy (`mode tcp`, `balance source`), same machine, same run, in
front of the same two HTTP/1.1 backends (separate uvloop processes).

Measured for each proxy (medians over --repeat rounds, the two proxies alternating):
  * keep-alive: requests/s and p99 latency, 50 concurrent keep-alive connections
    from 50 loopback source addresses (so source hashing uses both backends);
  * new connections/s: 50 concurrent clients, one request per connection
    (`Connection: close`);
  * bulk: MB/s (10^6 bytes) of one backend streaming --bulk-mib MiB through the proxy;
  * failover: a backend is SIGKILLed; seconds until each proxy marks it down and so
    routes no new connection to it (polled every 10 ms on HAProxy's stats socket and
    Flotilla's /stats), with the same check interval/timeout/fall on both; plus what a
    client hashed to that backend saw meanwhile (failed requests);
  * proxy CPU seconds per request (utime+stime from /proc/<pid>/stat).

Both proxies get their configuration from one `LoadBalancerConfig`; HAProxy's comes
from `flotilla.lb.haproxy.render` (HAProxy's defaults otherwise: threads, buffers).
Requires `haproxy` on PATH (Debian: `apt-get install -y haproxy`); installs nothing.

    python -m bench.lb [--duration 5] [--repeat 3] [--bulk-mib 1024]

Ends with one JSON line holding every figure and ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import uvloop

from flotilla.lb.config import Backend, HealthCheck, Listener, LoadBalancerConfig
from flotilla.lb.haproxy import render, server_name

CONNECTIONS = 50
CHECK = HealthCheck(interval=1.0, timeout=1.0, failure_count=2, success_count=3)
BODY = b"Hello, world!\n"
CHUNK = bytes(1 << 20)
KEEPALIVE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
CLOSE_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def response(name: bytes, close: bool) -> bytes:
    connection = b"close" if close else b"keep-alive"
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
        + str(len(BODY)).encode()
        + b"\r\nX-Backend: " + name + b"\r\nConnection: " + connection + b"\r\n\r\n" + BODY
    )  # fmt: skip


# -- the backends: a small HTTP/1.1 server, one process each ----------------------


class HttpBackend(asyncio.Protocol):
    """Answers `GET /` with a small body (keep-alive unless asked to close) and
    `GET /bulk/<bytes>` with that many zero bytes, respecting back-pressure."""

    def __init__(self, name: bytes) -> None:
        self.keep = response(name, False)
        self.close = response(name, True)
        self.buffer = b""
        self.remaining = 0
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        transport.set_write_buffer_limits(4 << 20)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        buffer = self.buffer + data if self.buffer else data
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head, buffer = buffer[:end], buffer[end + 4 :]
            if head.startswith(b"GET /bulk/"):
                self.remaining = int(head[10 : head.index(b" ", 10)])
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % self.remaining
                )
                self.pump()
            elif b"Connection: close" in head:
                self.transport.write(self.close)
                self.transport.close()
                return
            else:
                self.transport.write(self.keep)
        self.buffer = buffer

    def pump(self) -> None:
        assert self.transport is not None
        while self.remaining > 0 and not self.paused:
            n = min(self.remaining, len(CHUNK))
            self.transport.write(CHUNK if n == len(CHUNK) else CHUNK[:n])
            self.remaining -= n

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.pump()


def serve_backend(name: str, port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: HttpBackend(name.encode()), "127.0.0.1", port, backlog=4096
        )
        await server.serve_forever()

    uvloop.run(main())


# -- load generation (in this process, uvloop) ------------------------------------


@dataclass
class Window:
    """Counts what completes between `start` and `end` (perf_counter seconds)."""

    start: float
    end: float
    latencies: list[float] = field(default_factory=list)
    total: int = 0  # completed, warm-up included
    errors: int = 0
    backends: dict[str, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    open: int = 0

    def record(self, started: float, now: float) -> None:
        self.total += 1
        if now >= self.start and now <= self.end:
            self.latencies.append(now - started)


class KeepAliveClient(asyncio.Protocol):
    def __init__(self, window: Window, size: int) -> None:
        self.window = window
        self.size = size
        self.got = 0
        self.started = 0.0
        self.first = True
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.window.open += 1
        self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.got = 0
        self.started = time.perf_counter()
        self.transport.write(KEEPALIVE_REQUEST)

    def data_received(self, data: bytes) -> None:
        if self.first:
            self.first = False
            name = data.split(b"X-Backend: ", 1)[1].split(b"\r\n", 1)[0].decode()
            self.window.backends[name] = self.window.backends.get(name, 0) + 1
        self.got += len(data)
        if self.got < self.size:
            return
        now = time.perf_counter()
        self.window.record(self.started, now)
        if now < self.window.end:
            self.send()
        else:
            assert self.transport is not None
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None or self.got not in (0, self.size):
            self.window.errors += 1
        self.window.open -= 1
        if self.window.open == 0:
            self.window.done.set()


class OneShot(asyncio.Protocol):
    """One `Connection: close` request; `done` resolves to the response."""

    def __init__(self, done: asyncio.Future[bytes]) -> None:
        self.done = done
        self.chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)
        transport.write(CLOSE_REQUEST)

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is not None:
                self.done.set_exception(exc)
            else:
                self.done.set_result(b"".join(self.chunks))


async def one_request(port: int, source: str) -> bytes:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()
    await loop.create_connection(lambda: OneShot(done), "127.0.0.1", port, local_addr=(source, 0))
    reply = await done
    if not reply.startswith(b"HTTP/1.1 200"):
        raise ConnectionError("no response")
    return reply


def sources(block: int, count: int) -> list[str]:
    return [f"127.0.{block}.{i + 1}" for i in range(count)]


async def keep_alive(port: int, size: int, duration: float) -> Window:
    loop = asyncio.get_running_loop()
    now = time.perf_counter()
    warmup = min(1.0, duration / 4)
    window = Window(start=now + warmup, end=now + warmup + duration)
    for source in sources(1, CONNECTIONS):
        await loop.create_connection(
            lambda: KeepAliveClient(window, size), "127.0.0.1", port, local_addr=(source, 0)
        )
    await asyncio.wait_for(window.done.wait(), duration + warmup + 30)
    return window


async def new_connections(port: int, duration: float) -> Window:
    now = time.perf_counter()
    warmup = min(1.0, duration / 4)
    window = Window(start=now + warmup, end=now + warmup + duration)

    async def worker(source: str) -> None:
        while (started := time.perf_counter()) < window.end:
            try:
                await one_request(port, source)
            except OSError:
                window.errors += 1
            else:
                window.record(started, time.perf_counter())

    await asyncio.gather(*(worker(s) for s in sources(2, CONNECTIONS)))
    return window


def bulk(port: int, size: int) -> float:
    """Seconds to receive `size` bytes of body through `port`."""
    buffer = bytearray(4 << 20)
    view = memoryview(buffer)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        sock.sendall(b"GET /bulk/%d HTTP/1.1\r\nHost: bench\r\n\r\n" % size)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        remaining = size - len(head.split(b"\r\n\r\n", 1)[1])
        while remaining > 0:
            n = sock.recv_into(view)
            if n == 0:
                raise ConnectionError(f"bulk transfer ended {remaining} bytes short")
            remaining -= n
        return time.perf_counter() - started


# -- the proxies and backends as processes ----------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def cpu_seconds(pid: int) -> float:
    """CPU time of the process and of its live children (the proxy's workers)."""
    total = 0.0
    for each in [pid, *child_pids(pid)]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/bin")


@dataclass
class Proxy:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    is_down: Callable[[str], bool]  # backend key -> marked down?
    is_up: Callable[[str], bool]


def start_backend(name: str, port: int, root: Path) -> subprocess.Popen[bytes]:
    log = open(root / f"backend-{name}.log", "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.lb", "--backend", f"{name}:{port}"],
        stdout=log,
        stderr=log,
    )
    wait_port(port)
    return proc


def lb_config(port: int, backends: list[Backend]) -> LoadBalancerConfig:
    listener = Listener(port=port, host="127.0.0.1", backends=backends, health_check=CHECK)
    return LoadBalancerConfig(name="bench", listeners=[listener])


def start_haproxy(
    binary: str, port: int, backends: list[Backend], root: Path, threads: int | None = None
) -> Proxy:
    sock = root / "haproxy.sock"
    config = render(lb_config(port, backends), stats_socket=str(sock), nbthread=threads)
    (root / "haproxy.cfg").write_text(config)
    log = open(root / "haproxy.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [binary, "-db", "-f", str(root / "haproxy.cfg")], stdout=log, stderr=log
    )
    wait_port(port)

    def status(key: str) -> str:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        name = server_name(next(b for b in backends if b.key == key))
        return next(
            r["status"] for r in rows if r["pxname"] == f"bench_{port}" and r["svname"] == name
        )

    return Proxy("haproxy", port, proc, lambda k: status(k) == "DOWN", lambda k: status(k) == "UP")


def start_flotilla(port: int, backends: list[Backend], root: Path, workers: int) -> Proxy:
    stats_port = free_port()
    (root / "flotilla.json").write_text(lb_config(port, backends).model_dump_json())
    log = open(root / "flotilla.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "flotilla.lb.serve", str(root / "flotilla.json"),
            "--stats-port", str(stats_port), "--log-level", "WARNING",
            "--workers", str(workers),
        ],
        stdout=log,
        stderr=log,
    )  # fmt: skip
    wait_port(port)
    wait_port(stats_port)

    def state(key: str) -> str:
        url = f"http://127.0.0.1:{stats_port}/stats"
        with urllib.request.urlopen(url, timeout=5) as reply:
            snap = json.load(reply)
        return str(next(b["state"] for b in snap["listeners"][0]["backends"] if b["key"] == key))

    return Proxy(
        "flotilla", port, proc, lambda k: state(k) == "offline", lambda k: state(k) == "online"
    )


def wait_until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Poll every 10 ms; the perf_counter time it became true."""
    deadline = time.perf_counter() + within
    while not condition():
        if time.perf_counter() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return time.perf_counter()


# -- one round of measurements -----------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(proxy: Proxy, size: int, duration: float, bulk_bytes: int) -> dict[str, float]:
    pid = proxy.proc.pid
    cpu0, wall0, mine0 = cpu_seconds(pid), time.perf_counter(), own_cpu_seconds()
    ka = uvloop.run(keep_alive(proxy.port, size, duration))
    cpu1, wall1, mine1 = cpu_seconds(pid), time.perf_counter(), own_cpu_seconds()
    nc = uvloop.run(new_connections(proxy.port, duration))
    cpu2 = cpu_seconds(pid)
    seconds = bulk(proxy.port, bulk_bytes)
    if ka.errors or nc.errors:
        print(f"{proxy.name}: {ka.errors + nc.errors} failed requests", file=sys.stderr)
    return {
        "keepalive_rps": len(ka.latencies) / (ka.end - ka.start),
        "keepalive_p50_ms": percentile(ka.latencies, 0.50) * 1000,
        "keepalive_p99_ms": percentile(ka.latencies, 0.99) * 1000,
        "keepalive_backend_split": min(ka.backends.values()) / CONNECTIONS,
        "newconn_per_s": len(nc.latencies) / (nc.end - nc.start),
        "newconn_p99_ms": percentile(nc.latencies, 0.99) * 1000,
        "bulk_mb_s": bulk_bytes / seconds / 1e6,
        # CPU over each whole phase (warm-up included) per request it served.
        "cpu_us_per_request": (cpu1 - cpu0) / max(1, ka.total) * 1e6,
        "cpu_us_per_connection": (cpu2 - cpu1) / max(1, nc.total) * 1e6,
        "cpu_share_keepalive": (cpu1 - cpu0) / (wall1 - wall0),
        # The load generator's own share of a CPU: near 1.0 means it set the pace.
        "loadgen_cpu_share_keepalive": (mine1 - mine0) / (wall1 - wall0),
        "failed_requests": ka.errors + nc.errors,
    }


def request_via(port: int, source: str) -> tuple[bool, str]:
    """One `Connection: close` request; (answered, backend name)."""
    try:
        with socket.socket() as s:
            s.settimeout(5)
            s.bind((source, 0))
            s.connect(("127.0.0.1", port))
            s.sendall(CLOSE_REQUEST)
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
    except OSError:
        return False, ""
    if not reply.startswith(b"HTTP/1.1 200"):
        return False, ""
    return True, reply.split(b"X-Backend: ", 1)[1].split(b"\r\n", 1)[0].decode()


class Prober:
    """A client hashed to the victim, sending a new request every 10 ms meanwhile."""

    def __init__(self, proxy: Proxy, victim: str) -> None:
        self.port = proxy.port
        self.source = next(s for s in sources(3, 250) if request_via(proxy.port, s)[1] == victim)
        self.failed = 0
        self.slowest = 0.0
        self.stop = False

    def run(self) -> None:
        while not self.stop:
            started = time.perf_counter()
            ok, _ = request_via(self.port, self.source)
            self.slowest = max(self.slowest, time.perf_counter() - started)
            self.failed += not ok
            time.sleep(0.01)


def failover(
    proxies: list[Proxy], victim: Backend, name: str, kill: Callable[[], None]
) -> dict[str, dict[str, float]]:
    probers = {p.name: Prober(p, name) for p in proxies}
    threads = [threading.Thread(target=pr.run) for pr in probers.values()]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    kill()
    killed = time.perf_counter()
    down: dict[str, float] = {}
    deadline = killed + 30
    while len(down) < len(proxies) and time.perf_counter() < deadline:
        for proxy in proxies:
            if proxy.name not in down and proxy.is_down(victim.key):
                down[proxy.name] = time.perf_counter() - killed
        time.sleep(0.01)
    time.sleep(0.3)  # the probers see the steady state after the switch too
    for prober in probers.values():
        prober.stop = True
    for thread in threads:
        thread.join()
    return {
        p.name: {
            "failover_s": down.get(p.name, float("inf")),
            "failover_client_failed_requests": probers[p.name].failed,
            "failover_client_slowest_ms": probers[p.name].slowest * 1000,
        }
        for p in proxies
    }


# -- report --------------------------------------------------------------------------


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


def report(name: str, f: dict[str, float]) -> None:
    print(
        f"{name:>8}: keep-alive {f['keepalive_rps']:,.0f} req/s "
        f"(p50 {f['keepalive_p50_ms']:.2f} ms, p99 {f['keepalive_p99_ms']:.2f} ms); "
        f"new connections {f['newconn_per_s']:,.0f}/s; bulk {f['bulk_mb_s']:,.0f} MB/s; "
        f"failover {f['failover_s']:.2f} s ({f['failover_client_failed_requests']:.0f} "
        f"failed client requests); CPU {f['cpu_us_per_request']:.1f} us/request, "
        f"{f['cpu_us_per_connection']:.1f} us/connection",
        file=sys.stderr,
    )


def compare(result: dict[str, Any]) -> None:
    flo, ha = result["flotilla"], result["haproxy"]
    ratios = {
        "keepalive_rps": flo["keepalive_rps"] / ha["keepalive_rps"],
        "keepalive_p99": flo["keepalive_p99_ms"] / ha["keepalive_p99_ms"],
        "newconn_per_s": flo["newconn_per_s"] / ha["newconn_per_s"],
        "bulk_mb_s": flo["bulk_mb_s"] / ha["bulk_mb_s"],
        "cpu_per_request": flo["cpu_us_per_request"] / ha["cpu_us_per_request"],
        "failover_s": flo["failover_s"] / ha["failover_s"],
    }
    bound = CHECK.failure_count * CHECK.interval + CHECK.timeout
    result["ratios_flotilla_over_haproxy"] = ratios
    result["targets_met"] = {
        "keepalive_rps_at_least_0.9x": ratios["keepalive_rps"] >= 0.9,
        "newconn_per_s_at_least_0.6x": ratios["newconn_per_s"] >= 0.6,
        "bulk_mb_s_at_least_1.0x": ratios["bulk_mb_s"] >= 1.0,
        f"failover_within_{bound:g}s": flo["failover_s"] <= bound,
    }
    print(
        "flotilla / haproxy: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items())
        + "; targets: "
        + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in result["targets_met"].items()),
        file=sys.stderr,
    )


# -- main --------------------------------------------------------------------------


def run(args: argparse.Namespace, binary: str, root: Path) -> dict[str, Any]:
    ports = {"a": free_port(), "b": free_port()}
    procs = {name: start_backend(name, port, root) for name, port in ports.items()}
    backends = [Backend(address="127.0.0.1", port=port) for port in ports.values()]
    proxies: list[Proxy] = []
    try:
        proxies = [
            start_haproxy(binary, free_port(), backends, root, args.haproxy_threads),
            start_flotilla(free_port(), backends, root, args.flotilla_workers),
        ]
        for proxy in proxies:
            for backend in backends:
                wait_until(partial(proxy.is_up, backend.key), 10, f"{proxy.name} up")
        size = len(response(b"a", False))
        rounds: dict[str, list[dict[str, float]]] = {p.name: [] for p in proxies}
        for i in range(args.repeat):
            for proxy in proxies if i % 2 == 0 else proxies[::-1]:
                rounds[proxy.name].append(measure(proxy, size, args.duration, args.bulk_mib << 20))
            victim = backends[i % 2]
            name = "ab"[i % 2]

            def kill(name: str = name) -> None:
                procs[name].send_signal(signal.SIGKILL)
                procs[name].wait()

            for proxy_name, figures in failover(proxies, victim, name, kill).items():
                rounds[proxy_name][-1].update(figures)
            procs[name] = start_backend(name, victim.port, root)
            for proxy in proxies:
                wait_until(partial(proxy.is_up, victim.key), 15, f"{proxy.name} to see it back")
        return {"rounds": rounds, **{name: medians(r) for name, r in rounds.items()}}
    finally:
        for proc in [*(p.proc for p in proxies), *procs.values()]:
            proc.terminate()
        for proc in [*(p.proc for p in proxies), *procs.values()]:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load phase")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    parser.add_argument("--bulk-mib", type=int, default=1024, help="size of the bulk transfer")
    parser.add_argument(
        "--haproxy-threads", type=int, default=None, help="HAProxy nbthread (default: its own)"
    )
    parser.add_argument(
        "--flotilla-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="Flotilla data plane processes (default: one per CPU, as HAProxy's threads)",
    )
    parser.add_argument("--backend", help=argparse.SUPPRESS)  # NAME:PORT, internal
    args = parser.parse_args()
    if args.backend:
        name, port = args.backend.split(":")
        serve_backend(name, int(port))
        return
    binary = haproxy_binary()
    if binary is None:
        print(
            "bench.lb needs HAProxy as its peer: install it (Debian: apt-get install -y "
            "haproxy) and run again",
            file=sys.stderr,
        )
        sys.exit(2)
    version = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    root = Path(tempfile.mkdtemp(prefix="flotilla-bench-lb-"))
    try:
        figures = run(args, binary, root)
    except Exception:
        for log in sorted(root.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result: dict[str, Any] = {
        "duration_s": args.duration,
        "repeat": args.repeat,
        "bulk_mib": args.bulk_mib,
        "connections": CONNECTIONS,
        "health_check": CHECK.model_dump(),
        "cpus": os.cpu_count(),
        "haproxy_version": version,
        "haproxy_threads": args.haproxy_threads or "default (one per CPU)",
        "flotilla_workers": args.flotilla_workers,
        **figures,
    }
    for name in ("haproxy", "flotilla"):
        report(name, figures[name])
    compare(result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
