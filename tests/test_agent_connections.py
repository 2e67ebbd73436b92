"""Review of issue 12's remote-node code: connections that outlive their owner.

A real agent over mutual TLS on loopback (the fixture of test_agent_tls.py) and an
in-process asyncssh server; no root, no network namespace."""

from __future__ import annotations

import asyncio
import contextlib

import asyncssh

from flotilla.compute.ssh.enroll import SshTarget, _connect, close
from flotilla.errors import TemporaryError
from flotilla.runtime.agent_client import AgentClient
from tests.factories import free_port
from tests.test_agent_tls import Events, LoopbackAgent, client_files, loopback_agent  # noqa: F401


async def test_a_request_in_flight_when_its_client_closes_does_not_reopen_it(
    loopback_agent: LoopbackAgent,  # noqa: F811
) -> None:
    """agent_client.py:131-141 and :104-110: `connect()` never looks at `_closed`.
    A request in flight when `close()` runs (router.attach replacing a node,
    router.py:72-73; detach; a heartbeat or a log pull at that moment) gets the
    reader's ConnectionResetError, retries, and opens a fresh connection with a
    fresh reader task on the closed client: nobody will ever close them, and the
    agent's pushed events keep arriving at the discarded RemoteNode."""
    files = client_files(loopback_agent.ca, loopback_agent.scratch / "cp")
    client = AgentClient.over_tls(loopback_agent.target(files), Events().on_event)
    try:
        await client.request("hello")
        in_flight = asyncio.create_task(client.request("hello"))
        await asyncio.sleep(0)  # sent; waiting for its answer
        await client.close()
        with contextlib.suppress(TemporaryError, ConnectionError):
            await in_flight
        writer = client._writer
        assert writer is None or writer.is_closing(), "a closed client holds a new connection"
    finally:
        if client._reader_task is not None:
            client._reader_task.cancel()
        await client._close_writer()


async def test_a_connection_that_opens_after_its_client_closed_is_closed(
    loopback_agent: LoopbackAgent,  # noqa: F811
) -> None:
    """`close()` while `connect()` waits for its TLS handshake: the connection that
    opens afterwards belongs to nobody, so `connect()` closes it and says so,
    instead of keeping it (and a reader task) on the closed client."""
    files = client_files(loopback_agent.ca, loopback_agent.scratch / "cp")
    client = AgentClient.over_tls(loopback_agent.target(files), Events().on_event)
    try:
        opening = asyncio.create_task(client.connect())
        await asyncio.sleep(0)  # inside `_open`, the handshake not yet done
        await client.close()
        try:
            await opening
        except ConnectionResetError as e:
            assert "closed" in str(e)
        writer = client._writer
        assert writer is None or writer.is_closing(), "a closed client holds a new connection"
        assert client._reader_task is None
    finally:
        if client._reader_task is not None:
            client._reader_task.cancel()
        await client._close_writer()


class _Server(asyncssh.SSHServer):
    """Any key is accepted; direct TCP (what a jump host does) is allowed."""

    open: set[asyncssh.SSHServerConnection] = set()

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        _Server.open.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        _Server.open.discard(self.conn)

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True

    def connection_requested(self, dest_host: str, dest_port: int, *_: object) -> bool:
        return True


async def test_the_jump_host_connection_is_closed_with_the_enrollment() -> None:
    """enroll.py:111-134: the proxy_jump connection is opened by hand and passed
    to asyncssh as `tunnel=`; asyncssh closes only tunnels it opened itself (from a
    string), and enroll() closes only the inner connection (:102-103). Every
    enrollment through a jump host, and every failed retry (each 10 s .. 5 min,
    forever), leaves one SSH connection to the jump host open."""
    port = free_port()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen(
        "127.0.0.1", port, server_host_keys=[host_key], server_factory=_Server
    )
    try:
        key = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
        target = SshTarget("127.0.0.1", port, "root", key, proxy_jump=f"root@127.0.0.1:{port}")
        conn, tunnel = await _connect(target)
        assert len(_Server.open) == 2  # the jump host, and the host through it
        close(conn, tunnel)  # what enroll() does when it is done
        await conn.wait_closed()
        for _ in range(50):
            if not _Server.open:
                break
            await asyncio.sleep(0.02)
        assert not _Server.open, f"{len(_Server.open)} SSH connection(s) left open"
    finally:
        for left in list(_Server.open):
            left.close()
        server.close()
        await server.wait_closed()
