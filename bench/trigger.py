"""Trigger benchmark: Flotilla's local backend against Slurm's `sbatch`, same machine,
same run.

(a) start latency: from just before `POST /api/jobs/{id}/start` (resp. `sbatch`) to
    the first instruction of the run's command, p50/p95/p99 over N sequential triggers;
(b) burst: N trivial runs submitted from 8 threads: submit rate and makespan (first
    submit to the last run's end).

Both sides run the same command: `date +%s.%N` written to a file and renamed. Slurm is
a real single-host cluster (one slurmctld, four slurmd on loopback ports, Debian's
slurm-wlm) with `SchedulerParameters=batch_sched_delay=0`.

    python -m bench.trigger [--latency-samples 200] [--burst 1000] [--skip-slurm]

Ends with one JSON line holding every figure and ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.slurm_peer import (
    SlurmCluster,
    ensure_slurm_installed,
    measure_burst,
    measure_start_latency,
    wait_for_files,
)

TOKEN = "flo_bench-token"


def stamp_command(directory: Path) -> str:
    target = f"{directory}/$FLOTILLA_RUN_ID.ts"
    return f"date +%s.%N > {target}.tmp && mv {target}.tmp {target}"


def start_server(
    log_path: Path, port: int, env: dict[str, str], seconds: float
) -> subprocess.Popen[bytes]:
    """`flo server` on `port`, once it answers `/healthz` (its output to `log_path`)."""
    log = open(log_path, "ab")  # noqa: SIM115 - the server's, for its whole life
    proc = subprocess.Popen(["flo", "server", "--port", str(port)], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError("flo server did not start: " + log_path.read_text())


class FlotillaServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FlotillaServer:
        env = {
            **os.environ,
            "FLOTILLA_DATA_DIR": str(self.data_dir),
            "FLOTILLA_ADMIN_TOKEN": TOKEN,
            "FLOTILLA_SSH_PORT": "off",  # not measured here; 2222 may be another server's
            # Tasks as the server's user, as the Slurm peer's jobs run as root: the
            # same trust domain on both sides, and the stamp dir is this process's.
            "FLOTILLA_RUN_AS_USER": "0",
        }
        self.proc = start_server(self.root / "server.log", self.port, env, 30)
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)
        lock = self.data_dir / "agent.lock"
        if lock.exists():
            subprocess.run(["kill", lock.read_text().strip()], check=False)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {TOKEN}"}, timeout=60
        )

    def create_job(self, name: str, stamps: Path) -> str:
        recipe = {"type": "job", "spec": {"name": name, "command": stamp_command(stamps)}}
        with self.client() as c:
            response = c.put("/api/recipes", json=recipe)
            response.raise_for_status()
            return str(response.json()["state"]["id"])


def flotilla_latency(server: FlotillaServer, n: int, stamps: Path) -> list[float]:
    job_id = server.create_job("latency", stamps)
    samples = []
    with server.client() as c:
        for i in range(-2, n):  # two warm-up triggers, not reported
            t0 = time.time()
            response = c.post(f"/api/jobs/{job_id}/start")
            response.raise_for_status()
            run_id = response.json()["run"]["id"]
            stamp = wait_for_files([stamps / f"{run_id}.ts"], 30)[0]
            if i >= 0:
                samples.append(stamp - t0)
            time.sleep(0.02)  # let the run finish so triggers don't overlap
    return samples


def flotilla_burst(
    server: FlotillaServer, n: int, stamps: Path, concurrency: int = 8
) -> dict[str, float]:
    job_id = server.create_job("burst", stamps)
    local = threading.local()
    run_ids: list[str] = []

    def trigger(_: int) -> str:
        if not hasattr(local, "client"):
            local.client = server.client()
        response = local.client.post(f"/api/jobs/{job_id}/start")
        response.raise_for_status()
        return str(response.json()["run"]["id"])

    t_first = time.time()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        run_ids = list(pool.map(trigger, range(n)))
    submit_seconds = time.time() - t_first
    ends = wait_for_files([stamps / f"{r}.ts" for r in run_ids], max(120.0, n * 0.5))
    return {
        "submitted": n,
        "submit_seconds": submit_seconds,
        "submit_rate": n / submit_seconds,
        "makespan": max(ends) - t_first,
    }


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50": statistics.median(ordered),
        "p95": q[94],
        "p99": q[98],
        "mean": statistics.fmean(ordered),
    }


def report(who: str, lat: dict[str, float], burst: dict[str, float]) -> None:
    ms = {k: round(v * 1000, 1) for k, v in lat.items()}
    print(
        f"{who}: start latency p50 {ms['p50']} ms, p95 {ms['p95']} ms, p99 {ms['p99']} ms; "
        f"burst: {burst['submit_rate']:.0f} submits/s, makespan {burst['makespan']:.2f} s",
        file=sys.stderr,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--latency-samples", type=int, default=200)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--skip-slurm", action="store_true", help="measure Flotilla only")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="flotilla-bench-"))
    result: dict[str, Any] = {"latency_samples": args.latency_samples, "burst_runs": args.burst}
    try:
        with FlotillaServer(root) as server:
            (root / "lat").mkdir()
            (root / "burst").mkdir()
            lat = percentiles(flotilla_latency(server, args.latency_samples, root / "lat"))
            burst = flotilla_burst(server, args.burst, root / "burst")
        result["flotilla"] = {"start_latency_s": lat, **burst}
        report("flotilla", lat, burst)
        if not args.skip_slurm:
            ensure_slurm_installed()
            with SlurmCluster() as cluster:
                slurm_lat = percentiles(
                    measure_start_latency(cluster, args.latency_samples, root / "slurm-lat")
                )
                slurm_burst = measure_burst(cluster, args.burst, root / "slurm-burst")
            result["slurm"] = {"start_latency_s": slurm_lat, **slurm_burst}
            result["ratios"] = {
                "start_latency_p50_slurm_over_flotilla": slurm_lat["p50"] / lat["p50"],
                "start_latency_p99_slurm_over_flotilla": slurm_lat["p99"] / lat["p99"],
                "makespan_slurm_over_flotilla": slurm_burst["makespan"] / burst["makespan"],
                "submit_rate_flotilla_over_slurm": burst["submit_rate"]
                / slurm_burst["submit_rate"],
            }
            result["targets_met"] = {
                "start_latency_p50_at_least_20x": result["ratios"][
                    "start_latency_p50_slurm_over_flotilla"
                ]
                >= 20,
                "makespan_at_least_4x": result["ratios"]["makespan_slurm_over_flotilla"] >= 4,
                "submit_rate_at_least_5x": result["ratios"]["submit_rate_flotilla_over_slurm"] >= 5,
            }
            report("slurm", slurm_lat, slurm_burst)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
