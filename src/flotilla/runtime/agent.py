"""The node agent: a small daemon that launches and stops tasks on one machine.

The server talks to it over a Unix socket with newline-delimited JSON requests
(`launch`, `stop`, `inspect`, `hello`) and receives pushed `task` events as tasks start
and exit. Each task runs under its own supervisor forked from the agent (fork is
~1 ms; starting a fresh Python would cost ~30 ms per task). Supervisors live in
their own sessions, so the agent, like the server, can die without taking work with
it; a new agent reads task state from disk. The agent exits by itself when it has
had no tasks and no clients for a while.

Run as `python -m flotilla.runtime.agent --socket PATH --lock PATH`.
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
import sys
import time
from pathlib import Path
from typing import Any

from flotilla import __version__
from flotilla.runtime.diskstate import inspect_task
from flotilla.runtime.procs import read_json
from flotilla.runtime.supervisor import Supervisor
from flotilla.runtime.taskspec import EXITED, TaskFiles, TaskSpec

_LIMIT = 64 * 1024 * 1024  # a launch request carries the whole environment


class Agent:
    def __init__(self, socket_path: Path, idle_exit: float) -> None:
        self.socket_path = socket_path
        self.idle_exit = idle_exit
        self.clients: set[asyncio.StreamWriter] = set()
        self.children: dict[int, str] = {}  # supervisor pid -> task id
        self.task_dirs: dict[str, str] = {}
        self.last_busy = time.monotonic()
        self.done = asyncio.Event()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        loop.add_signal_handler(signal.SIGTERM, self.done.set)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        old_umask = os.umask(0o177)  # the socket is for its owner only
        try:
            server = await asyncio.start_unix_server(self._client, self.socket_path, limit=_LIMIT)
        finally:
            os.umask(old_umask)
        gc.freeze()  # fewer copy-on-write pages in every forked supervisor
        idle = asyncio.create_task(self._idle_watch())
        async with server:
            await self.done.wait()
        idle.cancel()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def _idle_watch(self) -> None:
        while True:
            await asyncio.sleep(min(5.0, self.idle_exit))
            if self.children or self.clients:
                self.last_busy = time.monotonic()
            elif time.monotonic() - self.last_busy > self.idle_exit:
                self.done.set()
                return

    # -- protocol ----------------------------------------------------------------

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
        except (ConnectionError, ValueError):
            pass
        finally:
            self.clients.discard(writer)
            writer.close()

    def _handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "hello":
            return {"version": __version__, "pid": os.getpid()}
        if op == "launch":
            return self._launch(TaskSpec.from_dict(request["task"]))
        if op == "stop":
            return self._stop(request["task_id"], request["task_dir"])
        if op == "inspect":
            states = [inspect_task(t["task_id"], t["task_dir"]).to_dict() for t in request["tasks"]]
            return {"tasks": states}
        raise ValueError(f"unknown op {op!r}")

    def _launch(self, spec: TaskSpec) -> dict[str, Any]:
        # Launching is idempotent: by this agent (memory) or an earlier one (disk).
        if spec.task_id in self.task_dirs or os.path.exists(spec.task_dir):
            return {"already": True}
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            Supervisor(spec, write_fd).run()
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
        started = read_json(files.started)
        if started:  # supervisor gone: signal the command's group ourselves
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(started["pid"]), signal.SIGKILL)
            return {"signalled": "group"}
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
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            task_id = self.children.pop(pid, None)
            if task_id is not None:
                self.task_dirs.pop(task_id, None)
                self.last_busy = time.monotonic()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Flotilla node agent")
    parser.add_argument("--socket", required=True, type=Path)
    parser.add_argument("--lock", required=True, type=Path)
    parser.add_argument("--idle-exit", type=float, default=600.0)
    parser.add_argument("--daemonize", action="store_true", help="fork; the parent exits at once")
    args = parser.parse_args(argv)
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
    asyncio.run(Agent(args.socket, args.idle_exit).serve())


if __name__ == "__main__":
    main()
