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
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from flotilla.runtime import proctree
from flotilla.server.services.audit import AuditEntry, record_audit
from flotilla.server.ssh.shell import TaskShell
from flotilla.server.ssh.targets import (
    Refused,
    Target,
    is_task_process,
    parse_login,
    resolve_target,
    ssh_identity,
    user_for_key,
)

if TYPE_CHECKING:
    from flotilla.server.context import ServerContext

log = logging.getLogger("flotilla.ssh")
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "ip6-localhost")
_WATCH_SECONDS = 1.0


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
        self._server: asyncssh.SSHAcceptor | None = None
        self._audits: set[asyncio.Task[None]] = set()
        self._watcher: asyncio.Task[None] | None = None

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

    async def start(self, host: str, port: int) -> None:
        # asyncssh narrates every connection at INFO; the audit log has what matters.
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        try:
            self._server = await asyncssh.create_server(
                lambda: GatewayConnection(self),
                host,
                port,
                server_host_keys=[self.host_key],
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
        self._watcher = asyncio.create_task(self._watch_tasks())
        log.info("SSH gateway on %s:%d (host key %s)", host, self.port, self.fingerprint)

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for connection in list(self.connections):
            connection.end("the Flotilla server is stopping")

    async def _watch_tasks(self) -> None:
        """Close the connections whose task has stopped (or was replaced)."""
        while True:
            await asyncio.sleep(_WATCH_SECONDS)
            for connection in list(self.connections):
                target = connection.target
                if target and not is_task_process(target.pid, target.run_id, target.rank):
                    connection.end(f"{target.label} has stopped")

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


class GatewayConnection(asyncssh.SSHServer):
    """One client connection: its user, its target and its shells."""

    def __init__(self, gateway: SshGateway) -> None:
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.source_ip = ""
        self.actor = "anonymous"
        self.refusal = ""
        self.target: Target | None = None
        self.accepted_key = b""
        self.shells: set[TaskShell] = set()

    # -- connection and authentication -----------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.source_ip = str(peer[0]) if peer else ""
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.connections.discard(self)
        if self.target is None and self.refusal:
            username = self.conn.get_extra_info("username", "") if self.conn else ""
            self.gateway.audit(self.actor, self.source_ip, username, 403, self.refusal)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        # A key is first offered without a signature, then signed: remember which key
        # passed, never just that one did (public keys are no secret).
        if self.target is not None:
            return key.public_data == self.accepted_key
        try:
            login = parse_login(username)
            async with self.gateway.ctx.transaction() as session:
                user = await user_for_key(session, key.public_data)
                if user is None:
                    raise Refused(
                        f"the key {key.get_fingerprint()} is not registered to any Flotilla "
                        "user; add it with `flo user add-key`"
                    )
                self.actor = user.name
                identity = await ssh_identity(session, user)
                self.target = await resolve_target(session, identity, login)
        except Refused as e:
            self._refuse(str(e))
            return False
        self.accepted_key = key.public_data
        return True

    def auth_completed(self) -> None:
        assert self.target is not None
        username = self.conn.get_extra_info("username", "") if self.conn else ""
        self.gateway.audit(self.actor, self.source_ip, username, 200, self.target.label)

    def _refuse(self, reason: str) -> None:
        """Say why in the authentication banner (OpenSSH prints it), once."""
        if reason != self.refusal and self.conn is not None:
            self.conn.send_auth_banner(f"flotilla: {reason}\r\n")
        self.refusal = reason

    # -- what an authenticated connection may open -----------------------------

    def session_requested(self) -> TaskShell:
        assert self.target is not None
        return TaskShell(self.target, self._shell_changed)

    def _shell_changed(self, shell: TaskShell, alive: bool) -> None:
        if alive:
            self.shells.add(shell)
        else:
            self.shells.discard(shell)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        """Port forwarding (`ssh -L`, IDEs): only to a loopback port that the task, or
        a process started from one of its shells, listens on."""
        assert self.target is not None
        if dest_host not in _LOOPBACK:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"forwarding reaches only the task's own ports on localhost, not {dest_host}",
            )
        sessions = {proctree.session_id(self.target.pid)}
        sessions |= {shell.session_id for shell in self.shells}
        owners = proctree.processes_in_sessions(s for s in sessions if s is not None)
        if dest_port not in proctree.listening_ports(owners):
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"nothing in {self.target.label} listens on port {dest_port}",
            )
        return True

    def end(self, message: str) -> None:
        for shell in list(self.shells):
            shell.end(message)
        if self.conn is not None:
            self.conn.close()


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
