"""A real, private, single-host multi-node Slurm cluster used as the peer in bench/trigger.py.

The cluster is one ``slurmctld`` plus ``nodes`` ``slurmd -N <name>`` daemons on loopback,
authenticated by a private ``munged``.  Everything (config, state, spool, logs, munge key
and socket) lives in one temporary directory and every command is pointed at it through
``SLURM_CONF``, so the system's /etc/slurm and /run/munge are never read or touched.

Measured here:
  * start latency: wall time from just before ``sbatch`` to the job's first instruction;
  * burst: submit rate of ``sbatch`` from a thread pool and the makespan of the burst.

Stdlib only; run ``python -m bench.slurm_peer`` (as root, on Debian) for a demo.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

# Debian's package names; 22.05 is what bookworm ships.
_APT_PACKAGES = ("slurm-wlm", "munge")
# One CPU per job, run in the caller's work dir, output discarded: the cheapest batch job.
_SBATCH_OPTS = ("--parsable", "--quiet", "-n1", "-c1", "--output=/dev/null", "--error=/dev/null")


def ensure_slurm_installed() -> None:
    """Install Slurm and munge with apt-get unless ``slurmctld`` is already on PATH."""
    if _which("slurmctld") and _which("munged"):
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", *_APT_PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if not _which("slurmctld"):
        raise RuntimeError("apt-get succeeded but slurmctld is still missing")


def _which(name: str) -> str | None:
    # The daemons live in /usr/sbin, which is not on every user's PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def _bin(name: str) -> str:
    """Resolve a Slurm/munge binary or fail with a hint."""
    found = _which(name)
    if not found:
        raise RuntimeError(f"{name} not found; call ensure_slurm_installed() first")
    return found


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for ``count`` distinct free TCP ports (high and unusual by nature)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:  # All held open together so the kernel cannot hand out one port twice.
        for s in socks:
            s.close()


class SlurmCluster:
    """A private Slurm cluster of ``nodes`` simulated nodes with ``cpus_per_node`` CPUs each."""

    def __init__(self, nodes: int = 4, cpus_per_node: int = 64, max_jobs: int = 100_000) -> None:
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        self.max_jobs = max_jobs  # MaxJobCount: the jobs slurmctld holds at once
        self.node_names = [f"bench-{i + 1}" for i in range(nodes)]
        self.root = Path(tempfile.mkdtemp(prefix="flotilla-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        """Environment for sbatch/squeue/sinfo against this cluster (not the system's)."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def _write_config(self) -> None:
        r = self.root
        for d in ("state", "spool", "log", "run", "munge", "jobs"):
            (r / d).mkdir(mode=0o700, exist_ok=True)
        for name in self.node_names:
            (r / "spool" / name).mkdir(mode=0o700, exist_ok=True)
        ctld_port, *node_ports = _free_ports(1 + self.nodes)
        # config_overrides: declared CPUs far beyond the 2 real cores are accepted
        # (otherwise the nodes register as INVAL).  One NodeName line per node gives
        # each slurmd its own port on the shared localhost address.
        node_lines = "\n".join(
            f"NodeName={n} NodeHostname=localhost Port={p} CPUs={self.cpus_per_node} "
            f"RealMemory=100000 State=UNKNOWN"
            for n, p in zip(self.node_names, node_ports, strict=True)
        )
        self.conf.write_text(f"""\
ClusterName=flotilla-bench
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmdParameters=config_overrides
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
MaxJobCount={self.max_jobs}
MinJobAge=2
ReturnToService=2
InactiveLimit=0
KillWait=5
SlurmctldTimeout=60
SlurmdTimeout=300
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
{node_lines}
PartitionName=bench Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _spawn(self, argv: list[str], log: str) -> None:
        # Foreground daemons (-F/-D) so the pid we record is the daemon itself; a new
        # session keeps terminal signals (Ctrl-C) from reaching them before stop() runs.
        with open(self.root / "log" / log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._procs.append(proc)

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None:
        """Poll ``ready()`` until true; on timeout raise with the slurmctld log tail."""
        deadline = time.monotonic() + timeout
        dead: list[object] = []
        while time.monotonic() < deadline:
            if ready():
                return
            dead = [p.args for p in self._procs if p.poll() is not None]
            if dead:
                break
            time.sleep(0.2)
        log = self.root / "log" / "slurmctld.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
        self.stop()
        raise RuntimeError(
            f"Slurm cluster: {what} not ready after {timeout}s "
            f"(exited: {dead}); slurmctld log tail:\n{tail}"
        )

    def _idle_nodes(self) -> int:
        argv = [_bin("sinfo"), "-h", "-N", "-o", "%N %t"]  # one "name state" line per node
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False).stdout
        return sum(1 for line in out.splitlines() if line.split()[1:2] == ["idle"])

    def start(self, timeout: float = 60.0) -> SlurmCluster:
        """Write configs, start munged, slurmctld and the slurmds; wait for all nodes idle."""
        atexit.register(self.stop)  # even if the caller forgets stop() or dies on an exception
        try:
            self._start(timeout)
        except BaseException:
            self.stop()  # never leave half a cluster (or its temp dir) behind
            raise
        return self

    def _start(self, timeout: float) -> None:
        self._write_config()
        key = self.root / "munge" / "munge.key"
        subprocess.run([_bin("mungekey"), "-c", "-k", str(key)], check=True, capture_output=True)
        # Socket, pid and seed go in the temp dir, not /run or /var.  --force: munged refuses
        # a socket dir that not every user can traverse (mkdtemp makes 0700); all our
        # clients are root, so the warning is harmless.  With -F it logs to stderr.
        m = self.root / "munge"
        munged = f"-F --force --num-threads=4 --socket={self.munge_socket} --key-file={key} "
        munged += f"--pid-file={m}/munged.pid --seed-file={m}/munged.seed"
        self._spawn([_bin("munged"), *munged.split()], "munged.out")
        self._wait("munged socket", self.munge_socket.exists, 15)
        # -i: ignore (absent) saved state; the state dir is fresh anyway.
        self._spawn([_bin("slurmctld"), "-D", "-i"], "slurmctld.out")
        for name in self.node_names:
            self._spawn([_bin("slurmd"), "-D", "-N", name], f"slurmd-{name}.out")
        self._wait("all nodes idle", lambda: self._idle_nodes() == self.nodes, timeout)

    def stop(self) -> None:
        """Cancel our jobs, then SIGTERM (later SIGKILL) exactly the daemons we started."""
        if any(p.poll() is None for p in self._procs):
            # SLURM_CONF points at our cluster, so this reaches only our jobs.
            cancel = [_bin("scancel"), "--partition=bench", "--quiet"]
            with contextlib.suppress(subprocess.TimeoutExpired):
                subprocess.run(cancel, env=self.env, capture_output=True, check=False, timeout=10)
        # The jobs' step daemons and scripts outlive a slurmd stopped while a
        # cancel is still being carried out: they are the daemons' descendants,
        # taken now and killed once the daemons are gone.
        steps = _descendants({p.pid for p in self._procs if p.poll() is None})
        # Reverse start order, one at a time: slurmds, slurmctld, and munged last, since
        # the Slurm daemons still talk to it while shutting down.
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        for pid in steps:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def sbatch(self, script: str, workdir: Path) -> str:
        """Submit a one-CPU ``--wrap`` job running as us in ``workdir``; return its job id."""
        argv = [_bin("sbatch"), *_SBATCH_OPTS, f"--chdir={workdir}", f"--wrap={script}"]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch failed: {proc.stderr.strip()}")
        return proc.stdout.strip().split(";")[0]


def _stamp_script(name: str) -> str:
    # Write then rename, so a reader never sees a half-written timestamp file.
    return f"date +%s.%N > {name}.tmp && mv {name}.tmp {name}"


def wait_for_files(paths: list[Path], timeout: float) -> list[float]:
    """Poll until every path exists and return the timestamps they hold."""
    deadline = time.monotonic() + timeout
    pending = set(paths)
    while pending:
        pending = {p for p in pending if not p.exists()}
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} of {len(paths)} jobs did not finish in {timeout}s")
        if pending:
            time.sleep(0.005)
    return [float(p.read_text()) for p in paths]


def measure_start_latency(
    cluster: SlurmCluster, n: int, workdir: Path | str, jitter: float = 1.0, warmup: int = 1
) -> list[float]:
    """Seconds from just before ``sbatch`` to the job's first command, for n sequential jobs.

    slurmctld starts batch jobs from a 1 s tick.  Submitting each job right after the
    previous one started would phase-lock every submission to just after a tick (all
    samples ~1.0 s), so each submission is first delayed by uniform(0, jitter) seconds
    to sample the tick phase the way independent users do.  The first job after start-up
    takes ~2 s, so ``warmup`` jobs are run first and not reported.
    """
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(-warmup, n):
        stamp = wd / f"lat-{i}.ts"
        time.sleep(random.uniform(0.0, jitter))
        t0 = time.time()  # wall clock: compared with the job's `date` (same host clock)
        cluster.sbatch(_stamp_script(stamp.name), wd)
        out.append(wait_for_files([stamp], timeout=60)[0] - t0)
    return out[warmup:]


def measure_burst(
    cluster: SlurmCluster, n: int, workdir: Path | str, concurrency: int = 8
) -> dict[str, float]:
    """Submit n trivial jobs from ``concurrency`` threads; report submit rate and makespan."""
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    stamps = [wd / f"burst-{i}.ts" for i in range(n)]
    t_first = time.time()
    # One sbatch process per job, as users and CI pipelines submit.
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda p: cluster.sbatch(_stamp_script(p.name), wd), stamps))
    submit_seconds = time.time() - t_first
    ends = wait_for_files(stamps, timeout=max(120.0, n * 0.5))
    return {
        "submitted": n,
        "submit_seconds": submit_seconds,
        "submit_rate": n / submit_seconds,
        "makespan": max(ends) - t_first,
    }


if __name__ == "__main__":
    import statistics

    ensure_slurm_installed()
    with SlurmCluster() as c:
        version = subprocess.run(
            [_bin("sinfo"), "--version"], env=c.env, capture_output=True, text=True, check=False
        ).stdout.strip()
        lat = measure_start_latency(c, 20, c.root / "jobs")
        burst = measure_burst(c, 200, c.root / "jobs")
    result: dict[str, object] = {"peer": "slurm", "version": version, "nodes": c.nodes}
    result |= {"cpus_per_node": c.cpus_per_node, "latency_mean_s": statistics.fmean(lat)}
    result |= {"latency_p50_s": statistics.median(lat), "latency_min_s": min(lat)}
    print(json.dumps(result | {"latency_max_s": max(lat), **burst}))


def _descendants(roots: set[int]) -> list[int]:
    """The pids of every process below `roots` (from /proc: each one's parent)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found: list[int] = []
    todo = list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found
