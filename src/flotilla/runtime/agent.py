"""The node agent: a small daemon that launches and stops tasks on one machine.

The server talks to it over a Unix socket with newline-delimited JSON requests
(`launch`, `stop`, `inspect`, `hello`) and receives pushed `task` events as tasks start
and exit. The agent of another host serves the same protocol over TCP with mutual
TLS (`--listen ADDR:PORT --tls-dir DIR`, after `flo agent join`): only a client
with the control plane's certificate from the CA pinned at join is served
(`runtime/tls.py`); a failed handshake closes that connection and nothing else.

Each task runs under its own supervisor forked from the agent (fork is ~1 ms;
starting a fresh Python would cost ~30 ms per task). Supervisors live in their own
sessions, so the agent, like the server, can die without taking work with it; a new
agent reads task state from disk. The agent exits by itself when it has had no tasks
and no clients for a while.

Run as `python -m flotilla.runtime.agent --socket PATH --lock PATH`, or on a joined
host `python -m flotilla.runtime.agent --listen 0.0.0.0:7477 --tls-dir DIR` (`flo agent
serve`), which does not exit when idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import json
import os
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from flotilla import __version__
from flotilla.runtime.diskstate import inspect_task
from flotilla.runtime.gpuhealth import GpuHealth
from flotilla.runtime.hostfiles import live_task_dirs, read_log, with_host_env
from flotilla.runtime.inventory import host_inventory
from flotilla.runtime.isolation import NodeIsolation, TaskCgroup
from flotilla.runtime.procs import read_json
from flotilla.runtime.renewal import CertRenewal
from flotilla.runtime.sessions.relay import SessionRelay
from flotilla.runtime.supervisor import Supervisor
from flotilla.runtime.taskspec import EXITED, TaskFiles, TaskSpec
from flotilla.runtime.tls import is_control_plane, server_context

_LIMIT = 64 * 1024 * 1024  # a launch request carries the whole environment
_HANDSHAKE_TIMEOUT = 10.0  # a client that never finishes its handshake is dropped


class Agent:
    def __init__(
        self,
        socket_path: Path | None,
        idle_exit: float,
        listen: tuple[str, int] | None = None,
        tls: ssl.SSLContext | None = None,
        isolation: NodeIsolation | None = None,
        data_dir: Path | None = None,
        declared_gpus: str | None = None,
        ssh_listen: tuple[str, int] | None = None,
        tls_dir: Path | None = None,
    ) -> None:
        if listen is not None and tls is None:
            raise ValueError("a TCP listener needs TLS: never an unauthenticated port")
        self.socket_path = socket_path
        self.idle_exit = idle_exit
        self.listen = listen
        self.tls = tls
        # Probed once; every supervisor applies it to its task (runtime/isolation).
        self.isolation = isolation or NodeIsolation.disabled("not probed")
        # An agent of another host keeps its tasks under DATA_DIR/runs and says so.
        self.runs_dir = data_dir / "runs" if data_dir is not None else None
        self.declared_gpus = declared_gpus
        # Its certificate, renewed over the control plane's link (`renewal.py`).
        self.renewal = CertRenewal(tls_dir, tls) if tls_dir is not None and tls else None
        # SSH sessions into this host's tasks, for the control plane's gateway
        # (`sessions/relay.py`): on a host's agent, beside its TLS port.
        self.ssh_listen = ssh_listen if data_dir is not None else None
        self.relay = (
            SessionRelay(data_dir / "ssh_relay_host_key")
            if data_dir is not None and ssh_listen is not None
            else None
        )
        # NVML health of a host's GPUs, read at every heartbeat (None: no NVML).
        self.gpu_health = GpuHealth.open() if data_dir is not None else None
        self.clients: set[asyncio.StreamWriter] = set()
        self.children: dict[int, str] = {}  # supervisor pid -> task id
        self.task_dirs: dict[str, str] = {}
        self.last_busy = time.monotonic()
        self.done = asyncio.Event()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        loop.add_signal_handler(signal.SIGTERM, self.done.set)
        servers = []
        if self.socket_path is not None:
            servers.append(await self._unix_server(self.socket_path))
        if self.listen is not None:
            servers.append(
                await asyncio.start_server(
                    self._tls_client,
                    *self.listen,
                    ssl=self.tls,
                    ssl_handshake_timeout=_HANDSHAKE_TIMEOUT,
                    limit=_LIMIT,
                )
            )
        if self.relay is not None and self.ssh_listen is not None and self.runs_dir is not None:
            await self.relay.start(*self.ssh_listen, self.runs_dir)
        gc.freeze()  # fewer copy-on-write pages in every forked supervisor
        idle = asyncio.create_task(self._idle_watch())
        async with contextlib.AsyncExitStack() as stack:
            for server in servers:
                await stack.enter_async_context(server)
            await self.done.wait()
        idle.cancel()
        if self.relay is not None:
            await self.relay.close()
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    async def _unix_server(self, path: Path) -> asyncio.Server:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        old_umask = os.umask(0o177)  # the socket is for its owner only
        try:
            return await asyncio.start_unix_server(self._client, path, limit=_LIMIT)
        finally:
            os.umask(old_umask)

    async def _idle_watch(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.idle_exit))
            if self.children or self.clients:
                self.last_busy = time.monotonic()
            elif time.monotonic() - self.last_busy > self.idle_exit:
                self.done.set()
                return

    # -- protocol ----------------------------------------------------------------

    async def _tls_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The handshake proved the CA; the CN tells the control plane from a node
        # (whose certificate the same CA issued).
        if not is_control_plane(writer.get_extra_info("ssl_object")):
            writer.close()
            return
        await self._client(reader, writer)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        try:
            while line := await reader.readline():
                request = json.loads(line)
                try:
                    reply = {"id": request.get("id"), "ok": True, **self._handle(request)}
                except Exception as e:
                    reply = {"id": request.get("id"), "ok": False, "error": repr(e)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (OSError, ValueError):  # ConnectionError, and TLS errors on TCP
            pass
        finally:
            self.clients.discard(writer)
            writer.close()

    def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "hello":
            return self._hello()
        if op == "launch":
            spec = TaskSpec.from_dict(request["task"])
            if self.runs_dir is not None:  # a remote host: its own PATH, not the server's
                spec.env = with_host_env(spec.env)
            return self._launch(spec)
        if op == "stop":
            return self._stop(request["task_id"], request["task_dir"])
        if op == "inspect":
            states = [inspect_task(t["task_id"], t["task_dir"]).to_dict() for t in request["tasks"]]
            return {"tasks": states}
        if op == "read_log":
            runs_dir = self._require_runs_dir()
            return read_log(
                runs_dir, request["task_dir"], request["name"], request["offset"], request["limit"]
            )
        if op == "live_tasks":
            return {"task_dirs": live_task_dirs(self._require_runs_dir())}
        if op == "ssh_ticket":
            return self._ssh_ticket(request)
        if op in ("cert_request", "cert_install"):
            if self.renewal is None:
                raise ValueError(
                    "this agent has no certificate to renew (it runs without --listen)"
                )
            if op == "cert_request":
                return self.renewal.request()
            return self.renewal.install(str(request["cert"]))
        raise ValueError(f"unknown op {op!r}")

    def _hello(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "isolation": self.isolation.probe.to_dict(),
            "containers": self.isolation.containers.summary(),
            "hostname": socket.gethostname(),
        }
        if self.renewal is not None:
            answer["cert_not_after"] = self.renewal.not_after()
        if self.runs_dir is not None:
            answer["runs_dir"] = str(self.runs_dir)
            answer["inventory"] = host_inventory(self.declared_gpus, str(self.runs_dir.parent))
        if self.gpu_health is not None:
            answer["gpu_health"] = [reading.to_dict() for reading in self.gpu_health.read()]
        return answer

    def _ssh_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.relay is None:
            raise ValueError("this agent has no session relay (it runs without --listen)")
        runs_dir = self._require_runs_dir().resolve()
        task_dir = Path(request["task_dir"]).resolve()
        if runs_dir not in task_dir.parents:
            raise ValueError(f"{request['task_dir']} is not a task dir of this agent")
        return self.relay.issue(
            str(task_dir),
            str(request["run_id"]),
            int(request["rank"]),
            str(request["label"]),
            [int(g) for g in request.get("gpus", [])],
        )

    def _require_runs_dir(self) -> Path:
        if self.runs_dir is None:
            raise ValueError("this agent has no data dir (--data-dir)")
        return self.runs_dir

    def _launch(self, spec: TaskSpec) -> dict[str, Any]:
        # Launching is idempotent: by this agent (memory) or an earlier one (disk).
        if spec.task_id in self.task_dirs or os.path.exists(spec.task_dir):
            return {"already": True}
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            Supervisor(spec, write_fd, self.isolation).run()
        os.close(write_fd)
        self.children[pid] = spec.task_id
        self.task_dirs[spec.task_id] = spec.task_dir
        self._watch_reports(read_fd)
        return {"pid": pid}

    def _stop(self, task_id: str, task_dir: str) -> dict[str, Any]:
        files = TaskFiles(task_dir)
        supervisor = read_json(files.supervisor)
        state = inspect_task(task_id, task_dir)
        if state.phase == EXITED:
            return {"already": True}
        if supervisor and state.phase != "lost":
            os.kill(int(supervisor["pid"]), signal.SIGTERM)  # it applies the grace period
            return {"signalled": "supervisor"}
        # Supervisor gone: kill the task's cgroup, or its command's group, ourselves.
        if (cgroup := TaskCgroup.load(files.cgroup)) is not None:
            cgroup.remove(timeout=0.5)  # blocks the loop: bounded
        started = read_json(files.started)
        if started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(started["pid"]), signal.SIGKILL)
            return {"signalled": "cgroup" if cgroup is not None else "group"}
        if cgroup is not None:
            return {"signalled": "cgroup"}
        return {"signalled": None}

    # -- reports from supervisors --------------------------------------------------

    def _watch_reports(self, fd: int) -> None:
        """Forward each state line a supervisor writes (JSON `TaskState`) to clients."""
        loop = asyncio.get_running_loop()
        os.set_blocking(fd, False)
        buffer = bytearray()

        def readable() -> None:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return
            if not chunk:
                loop.remove_reader(fd)
                os.close(fd)
                return
            buffer.extend(chunk)
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer[:] = rest
                self._broadcast(b'{"event": "task", "task": ' + line + b"}\n")

        loop.add_reader(fd, readable)

    def _broadcast(self, data: bytes) -> None:
        for writer in list(self.clients):
            if writer.is_closing():
                self.clients.discard(writer)
            else:
                writer.write(data)

    def _reap(self) -> None:
        # Only the supervisors: waitpid(-1) would also take the exit status of the
        # session relay's processes, which asyncio waits for (`sessions/shell.py`).
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid  # reaped already: gone all the same
            if done == 0:
                continue
            task_id = self.children.pop(pid, None)
            if task_id is not None:
                self.task_dirs.pop(task_id, None)
                # A supervisor killed before its cleanup leaves its cgroup behind.
                if (cgroup := self.isolation.cgroup_for(task_id)) is not None:
                    cgroup.remove_if_empty()
                self.last_busy = time.monotonic()


def parse_listen(value: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[V6]:PORT` or `:PORT` (every interface)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not ADDR:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Flotilla node agent")
    parser.add_argument("--socket", type=Path, help="serve the local server on this Unix socket")
    parser.add_argument("--listen", type=parse_listen, help="serve over TCP+TLS on ADDR:PORT")
    parser.add_argument("--tls-dir", type=Path, help="the TLS directory `flo agent join` wrote")
    parser.add_argument("--lock", type=Path, help="default with --listen: TLS_DIR/agent.lock")
    parser.add_argument(
        "--idle-exit", type=float, help="seconds (default 600; never with --listen)"
    )
    parser.add_argument("--daemonize", action="store_true", help="fork; the parent exits at once")
    parser.add_argument(
        "--data-dir", type=Path, help="with --listen: tasks live in DATA_DIR/runs [TLS_DIR/..]"
    )
    parser.add_argument("--gpus", help="declared GPUs when NVML finds none: H100:8")
    parser.add_argument(
        "--ssh-listen",
        type=parse_listen,
        help="with --listen: the session relay's ADDR:PORT [the --listen address, its port + 1]",
    )
    args = parser.parse_args(argv)
    if args.socket is None and args.listen is None:
        parser.error("give --socket, --listen or both")
    if args.listen is not None and args.tls_dir is None:
        parser.error("--listen needs --tls-dir: the agent never serves an unauthenticated port")
    if args.lock is None:
        if args.tls_dir is None:
            parser.error("give --lock")
        args.lock = args.tls_dir / "agent.lock"
    if args.listen is not None and args.data_dir is None:
        args.data_dir = args.tls_dir.resolve().parent
    if args.data_dir is not None:
        (args.data_dir / "runs").mkdir(parents=True, exist_ok=True, mode=0o700)
    if args.listen is not None and args.ssh_listen is None:
        args.ssh_listen = (args.listen[0], args.listen[1] + 1)
    if args.idle_exit is None:
        args.idle_exit = float("inf") if args.listen else 600.0
    tls = server_context(args.tls_dir) if args.listen is not None else None  # fails early
    if args.daemonize and os.fork() != 0:
        os._exit(0)
    lock = open(args.lock, "a+")  # noqa: SIM115 - held for the life of the process
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("another agent holds the lock; exiting", file=sys.stderr)
        return
    lock.seek(0)
    lock.truncate()
    lock.write(str(os.getpid()))
    lock.flush()
    # Plain asyncio, not uvloop: uvloop reserves SIGCHLD, which the agent needs to
    # reap its supervisors; the agent's traffic is light either way.
    isolation = NodeIsolation.detect(identity=str(args.lock.resolve()))
    agent = Agent(
        args.socket,
        args.idle_exit,
        args.listen,
        tls,
        isolation,
        data_dir=args.data_dir,
        declared_gpus=args.gpus,
        ssh_listen=args.ssh_listen,
        tls_dir=args.tls_dir if args.listen is not None else None,
    )
    asyncio.run(agent.serve())


if __name__ == "__main__":
    main()
