"""One SSH client connection to the gateway: who it is (the key), where its login
leads (a running task), and what it may open there: sessions (`runtime/sessions/
shell.py`) and port forwards to the addresses the task's own processes listen on;
for a task on another host, both through that host's session relay (`remote.py`).
Created by `SshGateway` for each connection asyncssh accepts."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncssh

from flotilla.runtime.sessions.forwards import forward_into, prohibited
from flotilla.runtime.sessions.shell import RefusalSession, TaskShell
from flotilla.runtime.sessions.target import Target
from flotilla.server.db.models import UserModel
from flotilla.server.services.identity.ssh_keys import user_for_key
from flotilla.server.ssh.remote import ProxySession, RemoteLink
from flotilla.server.ssh.targets import (
    Refused,
    RemoteTarget,
    login_of,
    resolve_target,
    ssh_identity,
)

if TYPE_CHECKING:
    from flotilla.server.ssh.gateway import SshGateway


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
        self.resolved: asyncio.Future[Target | RemoteTarget | None] | None = None
        self.target: Target | RemoteTarget | None = None
        self.shells: set[TaskShell] = set()
        self.link: RemoteLink | None = None  # to the host of a task on another host
        self.proxies: set[ProxySession] = set()  # its sessions, carried there

    # -- connection and authentication -----------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.source_ip = str(peer[0]) if peer else ""
        self.gateway.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.connections.discard(self)
        if self.link is not None:
            self.link.close()
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

    async def _resolve(self) -> Target | RemoteTarget | None:
        """Where the proven user's login leads, or None with `refusal` set; audited."""
        try:
            login = login_of(self._login())
            async with self.gateway.ctx.transaction() as session:
                user = await session.get(UserModel, self.user_id)
                if user is None or user.locked:
                    raise Refused(f"user {self.actor} is locked or gone")
                identity = await ssh_identity(session, user)
                target = await resolve_target(session, identity, login)
            if isinstance(target, RemoteTarget):
                self.link = await RemoteLink.open(self.gateway.ctx.backend, target, self.end)
            self.target = target
        except Refused as e:
            self.refusal = str(e)
            self.gateway.audit(self.actor, self.source_ip, self._login(), 403, self.refusal)
            return None
        self.gateway.audit(self.actor, self.source_ip, self._login(), 200, target.label)
        return target

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
        if self.link is not None:
            proxy = ProxySession(self.link)
            self.proxies.add(proxy)
            return proxy
        assert isinstance(target, Target)
        return TaskShell(target, self.shells, self.gateway.book)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        return self._forward(dest_host, dest_port)

    async def _forward(self, dest_host: str, dest_port: int) -> Any:
        """Port forwarding (`ssh -L`, IDEs): `forwards.py` says where it may go."""
        assert self.resolved is not None and self.conn is not None
        target = await self.resolved
        if target is None:
            raise prohibited(self.refusal)
        if self.link is not None:
            return await self.link.forward(dest_host, dest_port)
        assert isinstance(target, Target)
        sessions = [s.session_id for s in self.shells]
        return await forward_into(self.conn, target, sessions, dest_host, dest_port)

    async def recheck(self) -> None:
        """End the connection if its user lost the right to be there since logging in
        (locked, key removed, access revoked, `start_ssh` turned off)."""
        if self.target is None:
            return
        try:
            async with self.gateway.ctx.sessions() as session:
                user = await user_for_key(session, self.accepted_key)
                if user is None or user.id != self.user_id:
                    raise Refused(f"the key no longer opens {self.actor}'s account")
                identity = await ssh_identity(session, user)
                await resolve_target(session, identity, login_of(self._login()))
        except Refused as e:
            self.end(f"access ended: {e}")

    def end(self, message: str) -> None:
        for shell in list(self.shells):
            shell.end(message)
        for proxy in list(self.proxies):
            proxy.end(message)
        if self.link is not None:
            self.link.close()
        if self.conn is not None:
            self.conn.close()
