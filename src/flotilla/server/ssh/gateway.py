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
import ipaddress
import logging
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from flotilla.runtime import proctree
from flotilla.server.db.models import UserModel
from flotilla.server.services.audit import AuditEntry, record_audit
from flotilla.server.services.ssh_keys import user_for_key
from flotilla.server.ssh.shell import RefusalSession, TaskShell
from flotilla.server.ssh.targets import Refused, Target, login_of, resolve_target, ssh_identity

if TYPE_CHECKING:
    from flotilla.server.context import ServerContext

log = logging.getLogger("flotilla.ssh")
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "ip6-localhost")
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}
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
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 3)

    def remember(self, target: Target, session_id: int) -> None:
        self.sessions.setdefault(target, set()).add(session_id)

    async def _watch_tasks(self) -> None:
        """Close the connections of tasks that stopped (or were replaced), and kill
        what their SSH sessions left running: it may hold the task's GPUs."""
        while True:
            await asyncio.sleep(_WATCH_SECONDS)
            for connection in list(self.connections):
                target = connection.target
                if target and not target.is_running():
                    connection.end(f"{target.label} has stopped")
            stopped = [t for t in self.sessions if not t.is_running()]
            if stopped:
                leftovers = [sid for t in stopped for sid in self.sessions.pop(t)]
                await asyncio.to_thread(_kill_sessions, leftovers)

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
    """One client connection: its user, its target and its shells.

    Authentication only maps the key to a user: asyncssh asks about a key before
    the client proves it holds the private half, and anyone may offer anyone's
    public key. Where the login leads is decided once the key is proven
    (`auth_completed`), and a refusal is told to the session or the forward."""

    def __init__(self, gateway: SshGateway) -> None:
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.source_ip = ""
        self.user_id: str | None = None
        self.actor = "anonymous"
        self.accepted_key = b""
        self.refusal = ""
        self.resolved: asyncio.Future[Target | None] | None = None
        self.target: Target | None = None
        self.shells: set[TaskShell] = set()

    # -- connection and authentication -----------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.source_ip = str(peer[0]) if peer else ""
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.connections.discard(self)
        if self.resolved is None and self.refusal:  # never got past its keys
            self.gateway.audit("anonymous", self.source_ip, self._login(), 401, self.refusal)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if self.user_id is not None:  # one key per connection: the one that matched
            return key.public_data == self.accepted_key
        async with self.gateway.ctx.sessions() as session:
            user = await user_for_key(session, key.public_data)
        if user is None:
            self._refuse(
                f"the key {key.get_fingerprint()} is not registered to a Flotilla user "
                "(add yours with `flo user add-key`)"
            )
            return False
        self.user_id, self.actor, self.accepted_key = user.id, user.name, key.public_data
        return True

    def auth_completed(self) -> None:
        self.resolved = asyncio.ensure_future(self._resolve())

    async def _resolve(self) -> Target | None:
        """Where the proven user's login leads, or None with `refusal` set; audited."""
        try:
            login = login_of(self._login())
            async with self.gateway.ctx.transaction() as session:
                user = await session.get(UserModel, self.user_id)
                if user is None or user.locked:
                    raise Refused(f"user {self.actor} is locked or gone")
                identity = await ssh_identity(session, user)
                self.target = await resolve_target(session, identity, login)
        except Refused as e:
            self.refusal = str(e)
            self.gateway.audit(self.actor, self.source_ip, self._login(), 403, self.refusal)
            return None
        self.gateway.audit(self.actor, self.source_ip, self._login(), 200, self.target.label)
        return self.target

    def _login(self) -> str:
        return str(self.conn.get_extra_info("username", "")) if self.conn else ""

    def _refuse(self, reason: str) -> None:
        """Say why in the authentication banner (OpenSSH prints it), once."""
        if reason != self.refusal and self.conn is not None:
            self.conn.send_auth_banner(f"flotilla: {reason}\r\n")
        self.refusal = reason

    # -- what an authenticated connection may open -----------------------------

    def session_requested(self) -> Any:
        assert self.conn is not None
        return self.conn.create_server_channel(), self._session()

    async def _session(self) -> asyncssh.SSHServerSession[bytes]:
        assert self.resolved is not None
        target = await self.resolved
        if target is None:
            return RefusalSession(self.refusal)
        return TaskShell(target, self._shell_changed)

    def _shell_changed(self, shell: TaskShell, alive: bool) -> None:
        if alive:
            self.shells.add(shell)
            if shell.session_id is not None:
                self.gateway.remember(shell.target, shell.session_id)
        else:
            self.shells.discard(shell)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int) -> Any:
        """Port forwarding (`ssh -L`, IDEs): only to an address the task, or a process
        started from one of its shells, listens on, connected to exactly that
        socket's address."""
        assert self.resolved is not None and self.conn is not None
        target = await self.resolved
        if target is None:
            raise _prohibited(self.refusal)
        sessions = {proctree.session_id(target.pid)} | {s.session_id for s in self.shells}
        owned = await asyncio.to_thread(_listeners_of, {s for s in sessions if s is not None})
        address = reachable(dest_host, dest_port, owned)
        if address is None:
            raise _prohibited(f"nothing in {target.label} listens on {dest_host}:{dest_port}")
        return await self.conn.forward_connection(address, dest_port)

    def end(self, message: str) -> None:
        for shell in list(self.shells):
            shell.end(message)
        if self.conn is not None:
            self.conn.close()


def reachable(dest_host: str, dest_port: int, owned: set[tuple[str, int]]) -> str | None:
    """The address to connect to for `dest_host:dest_port` if one of the `owned`
    listeners serves it: a loopback name reaches the task's loopback or any-address
    listeners; an address reaches only a listener on exactly that address."""
    for address, port in sorted(owned):
        if port != dest_port:
            continue
        local = _WILDCARD.get(address, address)
        if dest_host in _LOOPBACK and ipaddress.ip_address(local).is_loopback:
            return local
        if dest_host in (address, local):
            return local
    return None


def _prohibited(reason: str) -> asyncssh.ChannelOpenError:
    return asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)


def _listeners_of(sessions: set[int]) -> set[tuple[str, int]]:
    return proctree.listeners(proctree.processes_in_sessions(sessions))


def _kill_sessions(sessions: list[int]) -> None:
    for pid in proctree.processes_in_sessions(sessions):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


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
