"""The server's side of the agent protocol: one persistent connection, request/response
matched by id, pushed `task` events handed to a callback.

The local agent is reached over a Unix socket, and started as a detached daemon when
none answers, so the first server start on a machine needs no extra step. The agent
of another host is reached over TCP with mutual TLS (`TlsTarget`: the control plane's
client certificate, and the node's checked to name that node); it is never started
from here, and a lost connection is re-opened in the background with back-off so
that pushed events flow again (events while it was down are not replayed yet: the
caller inspects its tasks in `on_reconnect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flotilla.errors import TemporaryError
from flotilla.runtime.taskspec import TaskSpec, TaskState
from flotilla.runtime.tls import TlsFiles, client_context

EventHandler = Callable[[TaskState], Awaitable[None]]
ReconnectHandler = Callable[[], Awaitable[None]]
_LIMIT = 64 * 1024 * 1024
_MAX_UNIX_PATH = 100
_CONNECT_TIMEOUT = 10.0
_RECONNECT_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)  # then 5 s between tries


@dataclass(frozen=True)
class TlsTarget:
    """An agent on another host: where it listens, the node name its certificate must
    carry, and the control plane's TLS context (`client_context`)."""

    host: str
    port: int
    node: str
    context: ssl.SSLContext

    @classmethod
    def of(cls, address: str, node: str, files: TlsFiles) -> TlsTarget:
        """From `tls://host:port` (`tls://[v6]:port`) and the control plane's files."""
        scheme, sep, rest = address.partition("://")
        host, colon, port = rest.rpartition(":")
        if scheme != "tls" or not sep or not colon or not port.isdigit() or not host:
            raise ValueError(f"{address!r} is not tls://HOST:PORT")
        return cls(host.strip("[]"), int(port), node, client_context(files))


def agent_socket_path(data_dir: Path) -> Path:
    """The socket path; Unix socket paths are limited to ~108 bytes."""
    path = data_dir / "agent.sock"
    if len(str(path)) <= _MAX_UNIX_PATH:
        return path
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:16]  # noqa: S324 - a name, not security
    return Path("/tmp") / f"flotilla-agent-{digest}.sock"


class AgentClient:
    def __init__(
        self,
        data_dir: Path,
        on_event: EventHandler,
        idle_exit: float = 600.0,
        *,
        tls: TlsTarget | None = None,
        on_reconnect: ReconnectHandler | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.socket = agent_socket_path(data_dir)
        self.on_event = on_event
        self.idle_exit = idle_exit
        self.tls = tls
        self.on_reconnect = on_reconnect
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        self._lock = asyncio.Lock()

    @classmethod
    def over_tls(
        cls,
        target: TlsTarget,
        on_event: EventHandler,
        on_reconnect: ReconnectHandler | None = None,
    ) -> AgentClient:
        """A client of the agent of another host (no local data dir, nothing spawned)."""
        return cls(Path("/nonexistent"), on_event, tls=target, on_reconnect=on_reconnect)

    async def connect(self) -> None:
        if self._closed:  # a request in flight at close() must not open a new one
            raise ConnectionResetError("agent client closed")
        async with self._lock:
            if self._writer is not None and not self._writer.is_closing():
                return
            reader, writer = await self._open()
            if self._closed:  # close() ran while this connection was opening
                writer.close()
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.wait_closed()
                raise ConnectionResetError("agent client closed")
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_loop(reader))

    async def close(self) -> None:
        self._closed = True
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnect_task
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        await self._close_writer()

    async def _close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def request(self, op: str, **payload: Any) -> dict[str, Any]:
        """Send one request; raises TemporaryError if the agent cannot be reached."""
        for attempt in range(2):
            try:
                await self.connect()
                return await self._send(op, payload)
            except (ConnectionError, OSError) as e:
                await self._close_writer()
                if attempt == 1:
                    raise TemporaryError(f"node agent unreachable: {e}") from e
        raise AssertionError("unreachable")

    async def launch(self, spec: TaskSpec) -> dict[str, Any]:
        return await self.request("launch", task=spec.to_dict())

    async def stop(self, task_id: str, task_dir: str) -> dict[str, Any]:
        return await self.request("stop", task_id=task_id, task_dir=task_dir)

    async def inspect(self, tasks: list[tuple[str, str]]) -> list[TaskState]:
        reply = await self.request(
            "inspect", tasks=[{"task_id": t, "task_dir": d} for t, d in tasks]
        )
        return [TaskState.from_dict(t) for t in reply["tasks"]]

    async def _send(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert self._writer is not None
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self._writer.write(json.dumps({"id": request_id, "op": op, **payload}).encode() + b"\n")
            await self._writer.drain()
            reply = await asyncio.wait_for(future, timeout=30)
        finally:
            self._pending.pop(request_id, None)
        if not reply.get("ok"):
            raise TemporaryError(f"node agent refused {op}: {reply.get('error')}")
        return reply

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if message.get("event") == "task":
                    await self.on_event(TaskState.from_dict(message["task"]))
                elif (future := self._pending.get(message.get("id"))) and not future.done():
                    future.set_result(message)
        except (OSError, ValueError):  # ConnectionError, and TLS errors on TCP
            pass
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionResetError("agent connection lost"))
            await self._close_writer()
            if self.tls is not None and not self._closed:
                self._reconnect_task = asyncio.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Re-open a lost TLS connection with back-off until it opens or `close()`."""
        for attempt in itertools.count():
            await asyncio.sleep(_RECONNECT_DELAYS[min(attempt, len(_RECONNECT_DELAYS) - 1)])
            try:
                await self.connect()
            except OSError:  # refused, unreachable, timed out, handshake failed
                continue
            if self.on_reconnect is not None:
                await self.on_reconnect()
            return

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.tls is not None:
            return await self._open_tls(self.tls)
        try:
            return await asyncio.open_unix_connection(self.socket, limit=_LIMIT)
        except (ConnectionError, FileNotFoundError):
            pass
        await self._spawn_agent()
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            try:
                return await asyncio.open_unix_connection(self.socket, limit=_LIMIT)
            except (ConnectionError, FileNotFoundError):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def _open_tls(
        self, target: TlsTarget
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        # ssl.SSLError (a failed handshake, the wrong name) is an OSError: callers
        # treat it like any unreachable agent. `asyncio.timeout`, not `wait_for`:
        # Python 3.11's `wait_for` can drop a connection that completed just as
        # it timed out, leaving its socket open until it is garbage-collected.
        async with asyncio.timeout(_CONNECT_TIMEOUT):
            return await asyncio.open_connection(
                target.host,
                target.port,
                ssl=target.context,
                server_hostname=target.node,
                ssl_handshake_timeout=_CONNECT_TIMEOUT,
                limit=_LIMIT,
            )

    async def _spawn_agent(self) -> None:
        """Start the agent as a daemon: `--daemonize` forks and the first process
        exits at once, so the agent is nobody's child and outlives the server."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(self.data_dir / "agent.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "flotilla.runtime.agent",
                "--daemonize",
                "--socket",
                str(self.socket),
                "--lock",
                str(self.data_dir / "agent.lock"),
                "--idle-exit",
                str(self.idle_exit),
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                env=env,
            )
        finally:
            os.close(log_fd)
        await proc.wait()


def agent_pid(data_dir: Path) -> int | None:
    """The pid of this data directory's agent, as recorded in its lock file."""
    try:
        return int((data_dir / "agent.lock").read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None
