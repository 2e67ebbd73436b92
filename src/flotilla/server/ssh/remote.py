"""SSH into a task on another host: the gateway decides who may (`targets.py`, as
for any task), then carries the user's sessions and port forwards to that host's
session relay (`runtime/sessions/relay.py`), where they run as the task's user in
its cgroup. The way in is a one-time ticket the host's agent issues over mutual
TLS, with the relay's host key, which this connection pins: the user's client
knows only the gateway, and the host knows only the control plane.

Each direction is carried as the client reads it: when one side cannot take more,
reading from the other pauses (asyncssh's windows do the rest), so the gateway
buffers little whatever the speeds. A session ends with the relay's exit status
or signal; the relay ends sessions when their task stops, and a lost link ends
the user's connection, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh

from flotilla.compute.agents.router import NodeRouter, SessionTicket
from flotilla.errors import TemporaryError
from flotilla.runtime.sessions.sshserver import CIPHERS
from flotilla.server.ssh.targets import Refused, RemoteTarget

CONNECT_SECONDS = 10.0
_RUNNING: set[asyncio.Task[None]] = set()  # the loop keeps only weak references


def _spawn(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)


class RemoteLink(asyncssh.SSHClient):
    """The gateway's connection to one host's relay, for one user connection."""

    def __init__(self, target: RemoteTarget, on_lost: Callable[[str], None]) -> None:
        self.target = target
        self.on_lost = on_lost
        self.conn: asyncssh.SSHClientConnection | None = None
        self.closing = False

    @classmethod
    async def open(
        cls, backend: Any, target: RemoteTarget, on_lost: Callable[[str], None]
    ) -> RemoteLink:
        """A logged-in link to the host running `target`, or Refused saying why not."""
        if not isinstance(backend, NodeRouter):
            raise Refused(f"{target.label} runs on host {target.task.node}, which is not joined")
        try:
            ticket = await backend.ssh_ticket(target.task, target.label, target.gpus)
        except TemporaryError as e:
            raise Refused(f"{target.label}: cannot reach host {target.task.node}: {e}") from e
        link = cls(target, on_lost)
        try:
            await asyncio.wait_for(link._connect(ticket), CONNECT_SECONDS)
        except (OSError, asyncssh.Error, TimeoutError) as e:
            why = str(e) or type(e).__name__
            raise Refused(f"{target.label}: the session relay of {target.task.node}: {why}") from e
        return link

    async def _connect(self, ticket: SessionTicket) -> None:
        key = asyncssh.import_public_key(ticket.host_key)
        await asyncssh.connect(
            ticket.host,
            ticket.port,
            client_factory=lambda: self,
            username=ticket.user,
            password=ticket.secret,
            preferred_auth="password",
            client_keys=None,
            agent_path=None,
            known_hosts=([key], [], []),  # the key the agent gave over mutual TLS
            encryption_algs=CIPHERS,
            keepalive_interval=30,
        )

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.on_lost(f"host {self.target.task.node} closed the connection")

    def close(self) -> None:
        self.closing = True
        if self.conn is not None:
            self.conn.close()

    async def forward(self, dest_host: str, dest_port: int) -> asyncssh.SSHTCPSession[bytes]:
        """A port forward into the task; the relay decides what it may reach and
        its refusal (ChannelOpenError) goes to the user as is."""
        assert self.conn is not None
        splice = TcpSplice()
        await self.conn.create_connection(lambda: splice.inner, dest_host, dest_port, encoding=None)
        return splice


class _Pump:
    """One end of a splice: a channel whose data goes to the other end's channel."""

    def __init__(self) -> None:
        self.chan: Any = None
        self.peer: _Pump | None = None
        self.pending: list[tuple[bytes, int | None]] = []
        self.pending_eof = False

    def send(self, data: bytes, datatype: int | None = None) -> None:
        if self.chan is None:
            self.pending.append((data, datatype))
        elif not self.chan.is_closing():
            self.chan.write(data, datatype)

    def send_eof(self) -> None:
        if self.chan is None:
            self.pending_eof = True
        elif not self.chan.is_closing():
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.write_eof()

    def attach(self, chan: Any) -> None:
        self.chan = chan
        for data, datatype in self.pending:
            self.send(data, datatype)
        self.pending = []
        if self.pending_eof:
            self.send_eof()

    # Flow control: this end's channel is full, so stop reading from the other's.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.chan is not None:
            self.peer.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.chan is not None:
            self.peer.chan.resume_reading()

    def close(self) -> None:
        if self.chan is not None and not self.chan.is_closing():
            self.chan.close()


class _TcpEnd(_Pump, asyncssh.SSHTCPSession[bytes]):
    def connection_made(self, chan: Any) -> None:
        self.attach(chan)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        assert self.peer is not None
        self.peer.send(data)

    def eof_received(self) -> bool:
        assert self.peer is not None
        self.peer.send_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.peer is not None
        self.peer.close()


class TcpSplice(_TcpEnd):
    """The user's end of a port forward (returned to asyncssh); `inner` the relay's."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _TcpEnd()
        self.peer, self.inner.peer = self.inner, self


class ProxySession(_Pump, asyncssh.SSHServerSession[bytes]):
    """The user's session on the gateway, carried to a session on the relay."""

    def __init__(self, link: RemoteLink) -> None:
        super().__init__()
        self.link = link
        self.inner = _InnerSession(self)
        self.peer = self.inner
        self.command: str | None = None
        self.subsystem: str | None = None
        self.terminal: tuple[str, tuple[int, int, int, int], Any] | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan  # attached to the inner end; its own queue is never used

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        self.terminal = (term_type, term_size, term_modes)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.subsystem = subsystem
        return subsystem == "sftp"

    def session_started(self) -> None:
        _spawn(self._open())

    async def _open(self) -> None:
        assert self.chan is not None and self.link.conn is not None
        options: dict[str, Any] = {"encoding": None, "request_pty": self.terminal is not None}
        if self.terminal is not None:
            options |= {"term_type": self.terminal[0], "term_size": self.terminal[1]}
        if self.subsystem is not None:
            options["subsystem"] = self.subsystem
        try:
            env = self.chan.get_environment()
            inner, _ = await self.link.conn.create_session(
                lambda: self.inner, self.command, env=env, **options
            )
        except (OSError, asyncssh.Error) as e:
            if not self.chan.is_closing():
                self.chan.write_stderr(f"flotilla: {self.link.target.label}: {e}\r\n".encode())
                self.chan.exit(255)
            return
        self.inner.attach(inner)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.inner.send(data, datatype)

    def eof_received(self) -> bool:
        self.inner.send_eof()
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self.inner.chan is not None:
            self.inner.chan.change_terminal_size(width, height, pixwidth, pixheight)

    def signal_received(self, signame: str) -> None:
        if self.inner.chan is not None:
            self.inner.chan.send_signal(signame)

    def break_received(self, msec: int) -> bool:
        if self.inner.chan is not None:
            self.inner.chan.send_break(msec)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.close()  # the user left: the relay hangs up the process

    def end(self, message: str) -> None:
        """Say why the gateway ends this session, and close it."""
        if message and self.chan is not None and not self.chan.is_closing():
            with contextlib.suppress(Exception):
                self.chan.write_stderr(f"\r\nflotilla: {message}\r\n".encode())
        self.inner.close()
        self.close()

    async def finish(self, status: int | None, exit_signal: tuple[str, bool, str] | None) -> None:
        """The relay's session ended: its status to the user, after its output."""
        chan = self.chan
        if chan is None:
            return
        # Polled: asyncssh reports a buffer below its low-water mark, never an empty one.
        while chan.get_write_buffer_size() and not chan.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if chan.is_closing():
            return
        if exit_signal is not None:
            chan.exit_with_signal(*exit_signal)
        elif status is not None:
            chan.exit(status)
        else:
            chan.write_stderr(f"\r\nflotilla: {self.link.target.label}: session lost\r\n".encode())
            chan.exit(255)


class _InnerSession(_Pump, asyncssh.SSHClientSession[bytes]):
    def __init__(self, outer: ProxySession) -> None:
        super().__init__()
        self.outer = outer
        self.peer = outer
        self.status: int | None = None
        self.exit_signal: tuple[str, bool, str] | None = None

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self.outer.chan is not None and not self.outer.chan.is_closing():
            self.outer.chan.write(data, datatype)

    def eof_received(self) -> bool:
        if self.outer.chan is not None and not self.outer.chan.is_closing():
            with contextlib.suppress(OSError, asyncssh.Error):
                self.outer.chan.write_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = (signal, core_dumped, msg)

    def connection_lost(self, exc: Exception | None) -> None:
        _spawn(self.outer.finish(self.status, self.exit_signal))
