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
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from flotilla.listeners import stop_accepting
from flotilla.server.services.audit import AuditEntry, record_audit
from flotilla.server.ssh.connection import GatewayConnection
from flotilla.server.ssh.leftovers import adopt_leftovers, kill_sessions
from flotilla.server.ssh.targets import Target

if TYPE_CHECKING:
    from flotilla.server.context import ServerContext

log = logging.getLogger("flotilla.ssh")
_WATCH_SECONDS = 1.0
_RECHECK_TICKS = 5  # access is checked again every 5 s
# AES (GCM first, CTR for older clients) and not ChaCha20-Poly1305: asyncssh runs AES
# in OpenSSL with the CPU's AES instructions but glues ChaCha20 and Poly1305 together
# in Python, which halved download speed (bench/ssh.py). OpenSSH clients then
# choose aes128-ctr, the first of their list we offer.
_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]


def load_host_key(data_dir: Path) -> asyncssh.SSHKey:
    """The gateway's host key, made on first start and kept (0600) so that clients'
    known_hosts entries stay valid across restarts."""
    path = data_dir / "ssh_host_ed25519_key"
    if path.exists():
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    return key


class SshGateway:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx
        self.host_key = load_host_key(ctx.settings.data_dir)
        self.connections: set[GatewayConnection] = set()
        # Sessions (by id) started in each task, kept after they end: what they left
        # running (`nohup … &`) is killed when the task stops.
        self.sessions: dict[Target, set[int]] = {}
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
        self.sessions = await adopt_leftovers(self.ctx)
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
                server_host_keys=[self.host_key],
                encryption_algs=_CIPHERS,
                encoding=None,
                line_editor=False,
                agent_forwarding=False,
                x11_forwarding=False,
                allow_scp=False,
                login_timeout=30,
                keepalive_interval=30,
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

    def remember(self, target: Target, session_id: int) -> None:
        self.sessions.setdefault(target, set()).add(session_id)

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
                if target and not target.is_running():
                    connection.end(f"{target.label} has stopped")
            stopped = [t for t in self.sessions if not t.is_running()]
            if stopped:
                leftovers = [sid for t in stopped for sid in self.sessions.pop(t)]
                await asyncio.to_thread(kill_sessions, leftovers)

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
