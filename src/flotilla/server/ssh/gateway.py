"""The SSH gateway: one port (2222 by default) through which users reach the tasks
of deployments and jobs that set `start_ssh: true`, from a terminal or an IDE
(VS Code, PyCharm and Cursor connect over SSH).

Users authenticate with the SSH keys registered on their Flotilla account; the
login name says which task (`targets.py`). A connection gets shells and commands
inside the task (`shell.py`), SFTP where OpenSSH's sftp-server is installed, and
port forwarding to the TCP ports the task's own processes listen on, nothing
else. Every login attempt is audited. When the task stops, its connections are
closed. Started and stopped with the server (`app.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import TYPE_CHECKING, Any

import asyncssh

from flotilla.listeners import stop_accepting
from flotilla.runtime.sessions.leftovers import SessionBook
from flotilla.runtime.sessions.sshserver import load_host_key, server_options
from flotilla.runtime.sessions.target import Target
from flotilla.server.services.identity.audit import AuditEntry, record_audit
from flotilla.server.ssh.connection import GatewayConnection
from flotilla.server.ssh.leftovers import adopt_leftovers

if TYPE_CHECKING:
    from flotilla.server.context import ServerContext

log = logging.getLogger("flotilla.ssh")
_WATCH_SECONDS = 1.0
_RECHECK_TICKS = 5  # access is checked again every 5 s


class SshGateway:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.host_key = load_host_key(ctx.settings.data_dir / "ssh_host_ed25519_key")
        self.connections: set[GatewayConnection] = set()
        # What sessions left running (`nohup … &`) is killed when their task stops.
        self.book = SessionBook()
        self._server: asyncssh.SSHAcceptor | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._audits: set[asyncio.Task[None]] = set()

    @property
    def public_key(self) -> str:
        return self.host_key.export_public_key().decode().strip()

    @property
    def fingerprint(self) -> str:
        return str(self.host_key.get_fingerprint())

    @property
    def port(self) -> int:
        assert self._server is not None, "gateway not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, api_port: int) -> None:
        """Listen on `port`; with 0, on any free port but `api_port`, which the API
        binds only after start-up and which the kernel may otherwise hand us."""
        # asyncssh narrates every connection at INFO; the audit log has what matters.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        for _ in range(10):
            await self._listen(host, port)
            if port != 0 or self.port != api_port:
                break
            self._server_close()
        self.book = SessionBook(await adopt_leftovers(self.ctx))
        self._watcher = asyncio.create_task(self._watch_tasks())
        log.info("SSH gateway on %s:%d (host key %s)", host, self.port, self.fingerprint)

    def _server_close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _listen(self, host: str, port: int) -> None:
        try:
            self._server = await asyncssh.create_server(
                lambda: GatewayConnection(self),
                host,
                port,
                **server_options(self.host_key),
            )
        except OSError as e:
            raise OSError(
                f"the SSH gateway cannot listen on {host}:{port} ({e.strerror}); set "
                "FLOTILLA_SSH_PORT to a free port, 0 for any, or 'off'"
            ) from e

    async def close(self) -> None:
        """End every connection (their processes get SIGHUP, as when sshd stops),
        then stop listening. Tasks keep running: they are not the gateway's."""
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        runners = []
        for connection in list(self.connections):
            runners += [s.runner for s in connection.shells if s.runner is not None]
            connection.end("the Flotilla server is stopping")
        if runners:
            await asyncio.wait(runners, timeout=3)
        if self._server is not None:
            await stop_accepting(self._server.sockets)
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 3)

    async def _watch_tasks(self) -> None:
        """Close the connections of tasks that stopped (or were replaced), and kill
        what their SSH sessions left running: it may hold the task's GPUs. Every
        few seconds, check that each connection's user may still be there."""
        for tick in itertools.count(1):
            await asyncio.sleep(_WATCH_SECONDS)
            if tick % _RECHECK_TICKS == 0:
                for connection in list(self.connections):
                    await connection.recheck()
            for connection in list(self.connections):
                target = connection.target
                # A task on another host: its relay ends the sessions (`remote.py`).
                if isinstance(target, Target) and not target.is_running():
                    connection.end(f"{target.label} has stopped")
            await self.book.reap()

    def audit(self, actor: str, source_ip: str, login: str, status: int, detail: str) -> None:
        """Record a login attempt, in the background (called from asyncssh callbacks)."""
        entry = AuditEntry(
            at=self.ctx.clock.now(),
            actor=actor,
            auth_method="ssh_key",
            source_ip=source_ip,
            method="SSH",
            path=login,
            action="SSH login",
            status_code=status,
            detail=detail,
        )
        task = asyncio.get_running_loop().create_task(self._record(entry))
        self._audits.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._audits.discard)

    async def _record(self, entry: AuditEntry) -> None:
        async with self.ctx.transaction() as session:
            record_audit(session, entry)


def gateway_info(gateway: SshGateway | None) -> dict[str, Any]:
    """What `GET /api/ssh` says: enough for a client to connect and verify the host."""
    if gateway is None:
        return {"enabled": False}
    return {
        "enabled": True,
        "port": gateway.port,
        "host_key": gateway.public_key,
        "fingerprint": gateway.fingerprint,
        "login": "NAME, NAME.RUN, NAME.RUN.RANK or OWNER/NAME of a deployment or job",
    }
