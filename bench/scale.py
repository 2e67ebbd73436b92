"""The control plane at depth: Flotilla with a deep pending queue on virtual nodes,
beside a real Slurm cluster with the same queue, in one run (issue 14).

Flotilla: `flo server` on a fresh PostgreSQL database, `FLOTILLA_SIM_VIRTUAL=1`
(the simulated cloud's nodes time their tasks instead of running them), one fixed
fleet of `--nodes` 8-GPU H100 nodes in `--partitions` InfiniBand partitions.
First every node is filled with one long run (the fill's end-to-end placements/s:
runs started through the API until all run), then pending runs are started until
each depth of `--depths` is reached, and at each depth:
- `POST /api/jobs/{id}/start` latency, p50/p99 of `--samples` sequential starts;
- `GET /api/queue` (first page, 100 runs) latency, p50 of 10;
- the server's RSS and its CPU (% of one core) over 5 s with nothing asked.
At the deepest depth, end-to-end placements/s: the job holding every node is
stopped in one call, and the clock runs until as many queued runs hold the nodes
in their place (the run that was that many places behind the head of the queue
heads it).

Slurm 22.05: a private cluster (`bench/slurm_peer.py`, `MaxJobCount` raised above
the deepest queue) with every CPU held by a long job, then `sbatch` until the same
depths; at each, `sbatch` p50/p99 and `squeue` latency.

One JSON line at the end. `python -m bench.scale --depths 100,1000,10000 --nodes
1000` is a quick run; the issue's is the default (100,000 pending, 10,000 nodes).
Needs PostgreSQL (`--database-url`, a server where a database can be created);
Slurm is installed with apt-get when missing (as root), or `--skip-slurm`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from bench.slurm_peer import SlurmCluster, ensure_slurm_installed
from bench.trigger import start_server

TOKEN = "bench-scale-admin-token"
H100 = "h100-80gb-sxm-ib.8x"
DEFAULT_PG = "postgresql://postgres:postgres@127.0.0.1:5432/postgres"
# Pending runs are started this many at a time while the queue is ramped.
RAMP_CONCURRENCY = 8


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered
    return {"p50": ms(statistics.median(ordered)), "p99": ms(q[min(98, len(q) - 1)])}


def timed(call: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    call()
    return time.perf_counter() - t0


# -- the database --------------------------------------------------------------------


def create_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on the server of `admin_url`; its URL and how to drop it."""
    import asyncpg  # type: ignore[import-untyped]  # the server's own driver

    name = f"flotilla_scale_{uuid.uuid4().hex[:8]}"
    dsn = admin_url.replace("postgresql+asyncpg://", "postgresql://")

    async def run(sql: str) -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    url = dsn.rsplit("/", 1)[0] + f"/{name}"

    def drop() -> None:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return url, drop


# -- Flotilla ------------------------------------------------------------------------


class Server:
    def __init__(self, root: Path, database_url: str, nodes: int, partitions: int) -> None:
        self.root = root
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "FLOTILLA_DATA_DIR": str(root / "data"),
            "FLOTILLA_DATABASE_URL": database_url,
            "FLOTILLA_ADMIN_TOKEN": TOKEN,
            "FLOTILLA_SSH_PORT": "off",
            "FLOTILLA_RUN_AS_USER": "0",  # nothing runs: no accounts to make
            "FLOTILLA_LOCAL_NODE": "0",
            "FLOTILLA_SIM_VIRTUAL": "1",
            "FLOTILLA_SIM_PROVISIONING_DELAY": "0",
            "FLOTILLA_SIM_FABRIC_NODES": str(nodes),
            "FLOTILLA_SIM_PARTITIONS": str(partitions),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.proc = start_server(self.root / "server.log", self.port, self.env, 90)
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"token {TOKEN}"}, timeout=120
        )

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0

    def cpu_percent(self, seconds: float = 5.0) -> float:
        """The server's CPU over `seconds` of nothing asked (its loops' own cost)."""
        assert self.proc is not None
        ticks = os.sysconf("SC_CLK_TCK")

        stat = Path(f"/proc/{self.proc.pid}/stat")

        def used() -> float:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after the command's name
            return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

        before, t0 = used(), time.monotonic()
        time.sleep(seconds)
        return round(100 * (used() - before) / (time.monotonic() - t0), 1)


def apply_job(c: httpx.Client, name: str, seconds: float) -> str:
    recipe = {
        "type": "job",
        "spec": {
            "name": name,
            "command": f"sleep {int(seconds)}",
            "resources": {"gpu": "H100:8"},
        },
    }
    response = c.put("/api/recipes", json=recipe)
    response.raise_for_status()
    return str(response.json()["state"]["id"])


def start(c: httpx.Client, job_id: str) -> None:
    c.post(f"/api/jobs/{job_id}/start").raise_for_status()


def start_many(server: Server, job_id: str, count: int) -> None:
    def one_batch(n: int) -> None:
        with server.client() as c:
            for _ in range(n):
                start(c, job_id)

    share = [
        count // RAMP_CONCURRENCY + (i < count % RAMP_CONCURRENCY) for i in range(RAMP_CONCURRENCY)
    ]
    with ThreadPoolExecutor(RAMP_CONCURRENCY) as pool:
        list(pool.map(one_batch, share))


def queue_empty(c: httpx.Client) -> bool:
    """No run waits: every one started is placed (virtual tasks run at once)."""
    response = c.get("/api/queue", params={"limit": 1})
    response.raise_for_status()
    return not response.json()["runs"]


def wait_for(check: Callable[[], bool], timeout: float, what: str, poll: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(poll)
    raise RuntimeError(f"timed out waiting for {what}")


def flotilla(args: argparse.Namespace, root: Path, database_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {"depths": {}}
    with Server(root, database_url, args.nodes, args.partitions) as server, server.client() as c:
        fleet = {
            "type": "fleet",
            "spec": {
                "name": "scale",
                "provider": "sim",
                "instance_type": H100,
                "region": "us-east1",
                "nodes": args.nodes,
            },
        }
        c.put("/api/recipes", json=fleet).raise_for_status()
        t0 = time.monotonic()
        wait_for(lambda: count_nodes(c) >= args.nodes, 1800, f"{args.nodes} ready nodes")
        out["nodes_ready_s"] = round(time.monotonic() - t0, 1)
        print(
            f"flotilla: {args.nodes} virtual nodes ready in {out['nodes_ready_s']} s",
            file=sys.stderr,
        )
        hold = apply_job(c, "hold", 10**6)
        t0 = time.monotonic()
        start_many(server, hold, args.nodes)
        wait_for(lambda: queue_empty(c), 1800, "every node busy")
        fill = time.monotonic() - t0
        out["fill"] = {
            "runs": args.nodes,
            "seconds": round(fill, 1),
            "placements_per_s": round(args.nodes / fill, 1),
        }
        print(f"flotilla: fill {out['fill']}", file=sys.stderr)
        waiting = apply_job(c, "waiting", 60)
        pending = 0
        for depth in args.depths:
            start_many(server, waiting, max(0, depth - pending))
            pending = max(pending, depth)
            starts = [timed(lambda: start(c, waiting)) for _ in range(args.samples)]
            pending += args.samples
            pages = [
                timed(lambda: c.get("/api/queue", params={"limit": 100}).raise_for_status())
                for _ in range(10)
            ]
            at = {
                "start": quantiles(starts),
                "queue_page_p50_ms": quantiles(pages)["p50"],
                "rss_mb": server.rss_mb(),
                "idle_cpu_percent": server.cpu_percent(),
            }
            out["depths"][str(depth)] = at
            print(f"flotilla at {depth} pending: {at}", file=sys.stderr)
        out["placements"] = release(c, hold, args.nodes, pending)
        print(f"flotilla: placements {out['placements']}", file=sys.stderr)
    return out


def release(c: httpx.Client, hold: str, nodes: int, pending: int) -> dict[str, Any]:
    """Stop the runs holding every node and time how long until queued runs hold
    them again: stops, supervision, scheduling and launch, end to end. The queue
    is first in, first out here (one shape, one owner): `nodes` of them hold again
    once the run that was `nodes + 1`-th in line heads the queue, or, with fewer
    waiting, once none waits."""
    marker = run_behind_head(c, nodes)
    placed = nodes if marker is not None else pending
    t0 = time.monotonic()
    c.post(f"/api/jobs/{hold}/stop").raise_for_status()

    def refilled() -> bool:
        head = c.get("/api/queue", params={"limit": 1})
        head.raise_for_status()
        runs = head.json()["runs"]
        return runs[0]["run_id"] == marker if runs else marker is None

    wait_for(refilled, 1800, f"{placed} queued runs placed", poll=0.1)
    seconds = time.monotonic() - t0
    return {
        "pending": pending,
        "runs": placed,
        "seconds": round(seconds, 2),
        "placements_per_s": round(placed / seconds, 1),
    }


def run_behind_head(c: httpx.Client, places: int) -> str | None:
    """The id of the run `places` places behind the head of the queue (0: the
    head), or None when fewer wait."""
    after, left = None, places
    while True:
        params = {"limit": min(1000, left + 1), **({"after": after} if after else {})}
        page = c.get("/api/queue", params=params)
        page.raise_for_status()
        body = page.json()
        if left < len(body["runs"]):
            return str(body["runs"][left]["run_id"])
        if body["next"] is None:
            return None
        left -= len(body["runs"])
        after = body["next"]


def count_nodes(c: httpx.Client) -> int:
    response = c.get("/api/fleets/scale")
    response.raise_for_status()
    return sum(1 for m in response.json()["members"] if m["state"] == "ready")


# -- Slurm ---------------------------------------------------------------------------


def slurm(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    ensure_slurm_installed()
    out: dict[str, Any] = {"depths": {}}
    deepest = max(args.depths) + args.samples * len(args.depths)
    with SlurmCluster(nodes=2, cpus_per_node=64, max_jobs=deepest + 1000) as cluster:
        work = root / "slurm"
        work.mkdir()
        with ThreadPoolExecutor(RAMP_CONCURRENCY) as pool:
            list(pool.map(lambda _: cluster.sbatch("sleep 1000000", work), range(128)))
            pending = 0
            for depth in args.depths:
                need = max(0, depth - pending)
                list(pool.map(lambda _: cluster.sbatch("sleep 60", work), range(need)))
                pending = max(pending, depth)
                submits = [
                    timed(lambda: cluster.sbatch("sleep 60", work)) for _ in range(args.samples)
                ]
                pending += args.samples
                squeue = [
                    timed(
                        lambda: subprocess.run(
                            ["squeue", "-h", "-t", "PD"],
                            env=cluster.env,
                            capture_output=True,
                            check=True,
                        )
                    )
                    for _ in range(5)
                ]
                at = {"sbatch": quantiles(submits), "squeue_p50_ms": quantiles(squeue)["p50"]}
                out["depths"][str(depth)] = at
                print(f"slurm at {depth} pending: {at}", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=10)
    parser.add_argument("--depths", default="100,1000,10000,100000")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument(
        "--database-url", default=os.environ.get("FLOTILLA_BENCH_PG_URL", DEFAULT_PG)
    )
    parser.add_argument("--skip-slurm", action="store_true")
    args = parser.parse_args()
    args.depths = sorted(int(d) for d in args.depths.split(","))
    root = Path(tempfile.mkdtemp(prefix="flotilla-scale-"))
    result: dict[str, Any] = {
        "nodes": args.nodes,
        "partitions": args.partitions,
        "samples": args.samples,
    }
    database_url, drop = create_database(args.database_url)
    try:
        try:
            result["flotilla"] = flotilla(args, root, database_url)
        except Exception:
            show_server_log(root / "server.log")
            raise
        if not args.skip_slurm:
            result["slurm"] = slurm(args, root)
            result["ratios"] = ratios(result)
    finally:
        drop()
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result))


def show_server_log(path: Path, lines: int = 80) -> None:
    """The end of the server's log, on stderr: the run failed, and the log goes with
    the run's directory."""
    if path.exists():
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"-- the last {len(tail)} lines of {path}:", *tail, sep="\n", file=sys.stderr)


def ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Per depth: Flotilla's start p50 over sbatch's, queue page over squeue."""
    out = {}
    for depth, ours in result["flotilla"]["depths"].items():
        theirs = result["slurm"]["depths"][depth]
        out[depth] = {
            "start_p50_over_sbatch_p50": round(ours["start"]["p50"] / theirs["sbatch"]["p50"], 2),
            "queue_page_over_squeue": round(ours["queue_page_p50_ms"] / theirs["squeue_p50_ms"], 2),
        }
    return out


if __name__ == "__main__":
    main()
