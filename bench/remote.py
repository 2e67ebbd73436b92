"""Remote-node benchmark (issue 12): what a node on another host costs.

(1) start latency: from just before `POST /api/jobs/{id}/start` to the first
    instruction of the run's command, p50/p99 over N sequential triggers, on three
    targets in one run: a remote host (a network namespace with its own address and
    files, its agent joined with `flo agent join` and served over mutual TLS), the
    server's local node, and Slurm (`sbatch` on bench.slurm_peer's private cluster).
    One server has both nodes, each with a GPU type the other lacks, and a job of
    each type, so each run lands where intended; triggers alternate between them.
    The command is bench.trigger's: `date +%s.%N` into a file, which the benchmark
    polls every 5 ms; the remote host writes it to its /home, a directory it
    shares with this machine (as a cluster shares /home over NFS). Triggers are
    sequential: each waits for the previous run to have finished.
(2) control-plane cost per connected agent: bench/agent_cost.py (RSS and CPU of
    the server process at 0 and N agents, `hello` round trips).

    python -m bench.remote [--runs 30] [--agents 200] [--window 30] [--skip-slurm]

Needs root (network namespaces; Slurm from Debian's slurm-wlm, installed if
missing). `--runs 0` or `--agents 0` leaves out a part. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.agent_cost import BenchServer, agent_cost
from bench.slurm_peer import (
    SlurmCluster,
    ensure_slurm_installed,
    measure_start_latency,
    wait_for_files,
)
from bench.trigger import percentiles, stamp_command
from flotilla.core.status import RunStatus
from flotilla.runtime.hosts import Host, HostNetwork
from flotilla.server.services.fleets.nodes import LOCAL_NODE

FLO = str(Path(sys.executable).parent / "flo")
AGENT_PORT = 7477
TLS_DIR = "/srv/flotilla/agent"  # on the host's own disk
WARMUP = 2  # triggers per target before the measured ones, not reported
# Each node has a GPU type the other lacks, so a job of that type can run only
# there (declared: NVML finds none on the benchmark machine).
LOCAL_GPU, REMOTE_GPU = "A100:1", "H100:1"
HOST_HOME = Path("/home")  # where the shared directory is on the remote host


@dataclass(frozen=True)
class Target:
    """A node to measure: a job only it can run (its GPU type), and where the run's
    stamp appears on this machine."""

    node: str
    job_id: str
    stamps: Path


def join_and_serve(server: BenchServer, host: Host, log: Path) -> None:
    """Join `host` as a node (`flo agent join` on it) and serve its agent there."""
    with server.client() as c:
        made = c.post("/api/agents/join-tokens", json={"node": host.name}).raise_for_status()
    token = made.json()
    argv = [FLO, "agent", "join", server.url, "--token", token["token"]]
    argv += ["--ca-sha256", token["ca_sha256"], "--tls-dir", TLS_DIR]
    host.run([*argv, "--advertise", f"{host.address}:{AGENT_PORT}"])
    serve = [FLO, "agent", "serve", "--listen", f"{host.address}:{AGENT_PORT}"]
    with open(log, "ab") as out:
        host.popen([*serve, "--tls-dir", TLS_DIR, "--gpus", REMOTE_GPU], stdout=out, stderr=out)


def create_job(server: BenchServer, name: str, stamps: Path, gpu: str) -> str:
    spec = {"name": name, "command": stamp_command(stamps), "resources": {"gpu": gpu}}
    with server.client() as c:
        applied = c.put("/api/recipes", json={"type": "job", "spec": spec}).raise_for_status()
    return str(applied.json()["state"]["id"])


def wait_node_ready(c: httpx.Client, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        nodes = {n["name"]: n for n in c.get("/api/nodes").raise_for_status().json()["nodes"]}
        if name in nodes and nodes[name]["state"] == "ready":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"node {name} not ready: {nodes.get(name)}")
        time.sleep(0.1)


def wait_finished(c: httpx.Client, run_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        run = c.get(f"/api/runs/{run_id}").raise_for_status().json()
        status = RunStatus(run["status"])
        if status.is_finished():
            if status != RunStatus.SUCCEEDED:
                raise RuntimeError(f"run {run_id} ended {status}")
            return dict(run)
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} still {status} after {timeout} s")
        time.sleep(0.02)


def trigger_once(c: httpx.Client, target: Target) -> float:
    """Seconds from just before the start to the run's `date`: the machine's one
    clock, on whichever host the command ran."""
    t0 = time.time()
    run_id = c.post(f"/api/jobs/{target.job_id}/start").raise_for_status().json()["run"]["id"]
    stamp = wait_for_files([target.stamps / f"{run_id}.ts"], 30)[0]
    run = wait_finished(c, run_id)  # the next trigger finds an idle system
    if run["tasks"][0]["node"] != target.node:
        raise RuntimeError(f"run {run_id} ran on {run['tasks'][0]['node']}, not {target.node}")
    return stamp - t0


def local_and_remote(root: Path, n: int) -> dict[str, list[float]]:
    """Start latency on the server's own node and on a remote host, one server,
    triggers alternating between them so that both see the same machine load."""
    shared = root / "home"
    (shared / "local").mkdir(parents=True)
    (shared / "remote").mkdir()
    with HostNetwork(shared_home=shared) as net:
        host = net.add_host("bench-remote")
        env = {"FLOTILLA_LOCAL_GPUS": LOCAL_GPU}
        with BenchServer(root / "server", host=net.address, env=env) as server:
            join_and_serve(server, host, root / "remote-agent.log")
            targets = {
                "local": Target(
                    LOCAL_NODE,
                    create_job(server, "on-local", shared / "local", LOCAL_GPU),
                    shared / "local",
                ),
                "remote": Target(
                    host.name,
                    create_job(server, "on-remote", HOST_HOME / "remote", REMOTE_GPU),
                    shared / "remote",
                ),
            }
            samples: dict[str, list[float]] = {name: [] for name in targets}
            with server.client() as c:
                wait_node_ready(c, host.name)
                for i in range(-WARMUP, n):
                    for name, target in targets.items():
                        sample = trigger_once(c, target)
                        if i >= 0:
                            samples[name].append(sample)
    return samples


def slurm_latency(root: Path, n: int) -> list[float]:
    ensure_slurm_installed()
    with SlurmCluster(nodes=1) as cluster:
        return measure_start_latency(cluster, n, root / "slurm")


def ms(figures: dict[str, float]) -> str:
    return f"p50 {figures['p50'] * 1000:.1f} ms, p99 {figures['p99'] * 1000:.1f} ms"


def start_latency_part(root: Path, n: int, with_slurm: bool) -> dict[str, Any]:
    samples = local_and_remote(root, n)
    if with_slurm:
        samples["slurm"] = slurm_latency(root, n)
    lat = {target: percentiles(s) for target, s in samples.items()}
    for target, figures in lat.items():
        print(f"start latency on {target}: {ms(figures)}", file=sys.stderr)
    remote = lat["remote"]
    ratios = {f"remote_over_local_{q}": remote[q] / lat["local"][q] for q in ("p50", "p99")}
    if "slurm" in lat:
        ratios |= {f"remote_over_slurm_{q}": remote[q] / lat["slurm"][q] for q in ("p50", "p99")}
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()), file=sys.stderr)
    return {"start_latency_s": lat, "ratios": ratios}


def report_agents(cost: dict[str, Any]) -> None:
    per = cost["per_agent"]
    print(
        f"{cost['count']} agents, heartbeat every {cost['heartbeat_seconds']} s: server RSS "
        f"{cost['idle']['rss_mb']:.0f} -> {cost['loaded']['rss_mb']:.0f} MB, CPU "
        f"{cost['idle']['cpu_percent']:.1f} -> {cost['loaded']['cpu_percent']:.1f} % of a core; "
        f"per agent {per['rss_kb']:.0f} kB, {per['cpu_percent']:.3f} % "
        f"({per['cpu_ms_per_heartbeat']:.2f} ms CPU per heartbeat); hello round trip "
        f"{ms(cost['hello_rtt_alone_s'])}; all at once: each {ms(cost['hello_rtt_s'])}, "
        f"the sweep {ms(cost['hello_sweep_s'])}; "
        f"each agent process {cost['agent_process_rss_mb']:.0f} MB",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=30, help="triggers per target (0: none)")
    parser.add_argument("--agents", type=int, default=200, help="loopback agents (0: none)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds per CPU/RSS window")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="node_heartbeat_seconds")
    parser.add_argument("--skip-slurm", action="store_true", help="no Slurm target")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flotilla-bench-remote-"))
    result: dict[str, Any] = {"runs": args.runs}
    try:
        if args.runs > 0:
            result |= start_latency_part(root / "latency", args.runs, not args.skip_slurm)
        if args.agents > 0:
            result["agents"] = agent_cost(root / "cost", args.agents, args.window, args.heartbeat)
            report_agents(result["agents"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
