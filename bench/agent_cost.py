"""Control-plane cost per connected node agent, for bench/remote.py (part 2).

One `flo server` with no local node, first alone, then with N real node agents on
loopback: each its own `python -m flotilla.runtime.agent` process with its own port,
data dir and TLS directory from a real join (`POST /api/agents/join`, the code of
`flo agent join`), all answering the server's heartbeats. The server process's CPU
time and RSS are read from /proc over the same window at 0 and at N agents; the
difference divided by N is what one more node costs the control plane. The `hello`
round trip is then timed from a second client holding the control plane's
certificate, all N agents asked at once as one heartbeat step asks them.

Every agent process is stopped by its recorded pid and its directory removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from bench.trigger import TOKEN, FlotillaServer
from flotilla.cli.agents import join_host
from flotilla.client.api import FlotillaClient
from flotilla.client.connection import Connection
from flotilla.runtime.agent_client import AgentClient, TlsTarget, agent_pid
from flotilla.runtime.taskspec import TaskState
from flotilla.runtime.tls import CA_FILE, TlsFiles, client_context

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# Agents are started this many at a time, each wave listening before the next:
# 200 Python start-ups at once would starve whatever else shares the machine.
START_WAVE = 8
AGENT_START_TIMEOUT = 30.0


class BenchServer(FlotillaServer):
    """bench.trigger's `flo server`, listening on `host`, with `env` (FLOTILLA_*
    settings) on top of this process's environment."""

    def __init__(self, root: Path, host: str = "127.0.0.1", env: dict[str, str] | None = None):
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root)
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.env = env or {}

    def __enter__(self) -> BenchServer:
        env = {**os.environ, "FLOTILLA_DATA_DIR": str(self.data_dir)}
        env |= {"FLOTILLA_ADMIN_TOKEN": TOKEN, "FLOTILLA_SSH_PORT": "off", **self.env}
        # As bench.trigger's server: one trust domain, like the Slurm peer's root jobs.
        env.setdefault("FLOTILLA_RUN_AS_USER", "0")
        argv = ["flo", "server", "--host", self.host, "--port", str(self.port)]
        with open(self.root / "server.log", "ab") as log:
            self.proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            time.sleep(0.05)
        self.__exit__()
        raise RuntimeError("flo server did not start: " + (self.root / "server.log").read_text())

    def __exit__(self, *_: object) -> None:
        """As bench.trigger's, then wait for the local agent it signalled to be gone
        (a daemon, not our child: nothing else would wait for it)."""
        local_agent = agent_pid(self.data_dir)
        super().__exit__()
        deadline = time.monotonic() + 10
        while local_agent and Path(f"/proc/{local_agent}").exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local agent {local_agent} did not exit")
            time.sleep(0.02)

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid


@dataclass(frozen=True)
class Usage:
    cpu_seconds: float  # user + system, all threads
    rss_bytes: int


def process_usage(pid: int) -> Usage:
    # The command name (field 2) may hold spaces and parentheses: split after its ")".
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return Usage((utime + stime) / CLOCK_TICKS, rss_kb * 1024)


def measure_window(pid: int, seconds: float) -> dict[str, float]:
    """CPU (% of one core) over `seconds`, and the median of the RSS read each second."""
    first = process_usage(pid)
    t0 = time.monotonic()
    rss = [first.rss_bytes]
    while (left := t0 + seconds - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        rss.append(process_usage(pid).rss_bytes)
    last = process_usage(pid)
    elapsed = time.monotonic() - t0
    return {
        "cpu_percent": (last.cpu_seconds - first.cpu_seconds) / elapsed * 100,
        "rss_mb": statistics.median(rss) / 2**20,
    }


@dataclass
class LoopbackAgent:
    name: str
    port: int
    relay_port: int  # its SSH session relay's: not port + 1, which may be another's
    root: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    def start(self) -> None:
        argv = [sys.executable, "-m", "flotilla.runtime.agent", "--listen"]
        argv += [f"127.0.0.1:{self.port}", "--tls-dir", str(self.tls_dir)]
        argv += ["--data-dir", str(self.root / "data")]
        argv += ["--ssh-listen", f"127.0.0.1:{self.relay_port}"]
        with open(self.root / "agent.log", "ab") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.root / "agent.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"agent {self.name} exited {self.proc.returncode}: {log}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0


class AgentFleet:
    """`count` agents joined to `server` and serving on loopback; stopped on exit."""

    def __init__(self, server: BenchServer, count: int, root: Path) -> None:
        self.server = server
        ports = free_ports(2 * count)
        self.agents = [
            LoopbackAgent(f"bench-a{i}", ports[2 * i], ports[2 * i + 1], root / f"a{i}")
            for i in range(count)
        ]

    def __enter__(self) -> AgentFleet:
        try:
            self._join_all()
            for i in range(0, len(self.agents), START_WAVE):
                wave = self.agents[i : i + START_WAVE]
                for agent in wave:
                    agent.start()
                deadline = time.monotonic() + AGENT_START_TIMEOUT
                while not all(a.listening() for a in wave):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"agents of wave {i // START_WAVE} not listening")
                    time.sleep(0.02)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _join_all(self) -> None:
        connection = Connection(url=self.server.url, token=None, source="join")
        with self.server.client() as admin, FlotillaClient(connection) as api:
            for agent in self.agents:
                made = admin.post("/api/agents/join-tokens", json={"node": agent.name})
                made.raise_for_status()
                token = made.json()
                join_host(
                    api,
                    token["token"],
                    agent.name,
                    agent.tls_dir,
                    token["ca_sha256"],
                    advertise=f"127.0.0.1:{agent.port}",
                )

    def stop(self) -> None:
        """SIGTERM each agent we started, by pid; SIGKILL one that does not end."""
        running = [a.proc for a in self.agents if a.proc is not None and a.proc.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def wait_ready(self, timeout: float) -> None:
        names = {a.name for a in self.agents}
        deadline = time.monotonic() + timeout
        with self.server.client() as c:
            while True:
                nodes = c.get("/api/nodes").raise_for_status().json()["nodes"]
                ready = {n["name"] for n in nodes if n["state"] == "ready"} & names
                if ready == names:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(ready)} of {len(names)} agent nodes ready")
                time.sleep(0.5)

    def agent_rss_mb(self) -> float:
        """The median agent's own RSS: what it costs the host it runs on."""
        pids = [a.proc.pid for a in self.agents if a.proc is not None]
        return statistics.median(process_usage(p).rss_bytes for p in pids) / 2**20


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (held open together while picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


async def hello_round_trips(fleet: AgentFleet, pki_dir: Path, sweeps: int) -> dict[str, Any]:
    """`hello` to each agent in turn, then to every agent at once `sweeps` times
    (as one heartbeat step asks them), on connections opened first (as the node
    reconciler keeps them): each answer's round trip and each sweep's."""
    # The server's own client certificate (services/agents.control_plane_tls writes
    # it there): the only one the agents accept.
    files = TlsFiles(
        pki_dir / "control-plane.key", pki_dir / "control-plane.crt", pki_dir / CA_FILE
    )
    context = client_context(files)

    async def ignore(_: TaskState) -> None:
        return None

    clients = [
        AgentClient.over_tls(TlsTarget("127.0.0.1", a.port, a.name, context), ignore)
        for a in fleet.agents
    ]

    async def timed(client: AgentClient) -> float:
        t0 = time.perf_counter()
        await client.request("hello")
        return time.perf_counter() - t0

    try:
        await asyncio.gather(*(c.connect() for c in clients))
        alone = [await timed(c) for c in clients]  # one at a time: the bare round trip
        trips: list[float] = []
        sweep_times = []
        for _ in range(sweeps):
            t0 = time.perf_counter()
            trips += await asyncio.gather(*(timed(c) for c in clients))
            sweep_times.append(time.perf_counter() - t0)
    finally:
        await asyncio.gather(*(c.close() for c in clients))
    return {
        "hello_rtt_alone_s": quantiles(alone),
        "hello_rtt_s": quantiles(trips),
        "hello_sweep_s": quantiles(sweep_times),
    }


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p99 = statistics.quantiles(ordered, n=100, method="inclusive")[98] if len(ordered) > 1 else 0
    return {"p50": statistics.median(ordered), "p99": p99 or ordered[-1], "max": ordered[-1]}


def agent_cost(root: Path, count: int, window: float, heartbeat: float) -> dict[str, Any]:
    """The control plane alone, then with `count` agents heartbeating every
    `heartbeat` seconds, each measured over `window` seconds."""
    env = {"FLOTILLA_LOCAL_NODE": "0", "FLOTILLA_NODE_HEARTBEAT_SECONDS": str(heartbeat)}
    # The unreachable/failed limits must stay above the interval (Settings checks).
    env["FLOTILLA_NODE_UNREACHABLE_SECONDS"] = str(max(15.0, 3 * heartbeat))
    env["FLOTILLA_NODE_FAILED_SECONDS"] = str(max(60.0, 12 * heartbeat))
    with BenchServer(root / "server", env=env) as server:
        time.sleep(2.0)  # start-up work (migrations, first reconciler steps) done
        idle = measure_window(server.pid, window)
        with AgentFleet(server, count, root / "agents") as fleet:
            t0 = time.monotonic()
            fleet.wait_ready(timeout=60 + count * 0.5)
            ready_s = time.monotonic() - t0
            time.sleep(heartbeat + 1.0)  # every agent connected and beaten at least once
            loaded = measure_window(server.pid, window)
            rtt = asyncio.run(hello_round_trips(fleet, server.data_dir / "pki", sweeps=5))
            agent_rss = fleet.agent_rss_mb()
    cpu_delta = loaded["cpu_percent"] - idle["cpu_percent"]
    return {
        "count": count,
        "heartbeat_seconds": heartbeat,
        "window_seconds": window,
        "all_ready_after_last_start_s": ready_s,
        "idle": idle,
        "loaded": loaded,
        "per_agent": {
            "rss_kb": (loaded["rss_mb"] - idle["rss_mb"]) * 1024 / count,
            "cpu_percent": cpu_delta / count,
            # Independent of the interval: CPU per agent per heartbeat step.
            "cpu_ms_per_heartbeat": cpu_delta / 100 * heartbeat / count * 1000,
        },
        "agent_process_rss_mb": agent_rss,
        **rtt,
    }
