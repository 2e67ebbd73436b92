"""A host agent's session relay: SSH sessions into this host's running tasks, for
the control plane's gateway, which alone decides who may enter which task.

The gateway asks the agent, over their mutual TLS connection (`ssh_ticket`), for
a ticket to one task; the agent answers with a one-time secret, this relay's port
and its host key. The gateway then connects here, the host key pinned to that
answer, and logs in with the ticket as its password, once, within TICKET_SECONDS.
Its sessions and port forwards then run exactly as the gateway's own do on its
machine (`shell.py`, `entry.py`, `forwards.py`): as the task's user, in its cgroup
and mount namespace. Nothing else gets in: without a ticket there is no login,
and a ticket opens only its task. Sessions end when the task stops; what they
left running is killed then.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import itertools
import logging
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh

from flotilla.listeners import stop_accepting
from flotilla.runtime import proctree
from flotilla.runtime.hostfiles import live_task_dirs
from flotilla.runtime.procs import read_json
from flotilla.runtime.sessions.forwards import forward_into, prohibited
from flotilla.runtime.sessions.leftovers import SessionBook, marked_sessions
from flotilla.runtime.sessions.shell import TaskShell
from flotilla.runtime.sessions.sshserver import load_host_key, server_options
from flotilla.runtime.sessions.target import Target, task_target
from flotilla.runtime.taskspec import TaskFiles

log = logging.getLogger("flotilla.agent")
TICKET_SECONDS = 30.0
RELAY_USER = "flotilla"
_WATCH_SECONDS = 1.0


@dataclass(frozen=True)
class Ticket:
    target: Target
    expires: float  # time.monotonic()


class SessionRelay:
    def __init__(self, key_path: Path) -> None:
        self.host_key = load_host_key(key_path)
        self.tickets: dict[str, Ticket] = {}
        self.connections: set[RelayConnection] = set()
        self.book = SessionBook()
        self._server: asyncssh.SSHAcceptor | None = None
        self._watcher: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "relay not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int, runs_dir: Path) -> None:
        """Listen; adopt what an earlier agent's sessions left in tasks still running."""
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        self.book = SessionBook(await asyncio.to_thread(_leftovers, runs_dir))
        try:
            self._server = await asyncssh.create_server(
                lambda: RelayConnection(self), host, port, **server_options(self.host_key)
            )
        except OSError as e:
            raise OSError(
                f"the session relay cannot listen on {host}:{port} ({e.strerror}): give "
                "--ssh-listen ADDR:PORT"
            ) from e
        self._watcher = asyncio.create_task(self._watch())

    def issue(
        self, task_dir: str, run_id: str, rank: int, label: str, gpus: list[int]
    ) -> dict[str, Any]:
        """A ticket to the task in `task_dir`, if it runs here; ValueError if not."""
        started = read_json(TaskFiles(task_dir).started)
        target = None
        if started and "pid" in started:
            target = task_target(label, run_id, rank, int(started["pid"]), tuple(gpus))
        if target is None:
            raise ValueError(f"{label} is not running on this host")
        now = time.monotonic()
        self.tickets = {k: t for k, t in self.tickets.items() if t.expires > now}
        secret = secrets.token_urlsafe(32)
        self.tickets[secret] = Ticket(target, now + TICKET_SECONDS)
        public = self.host_key.export_public_key().decode().strip()
        return {"ticket": secret, "port": self.port, "host_key": public, "user": RELAY_USER}

    def redeem(self, secret: str) -> Target | None:
        """The ticket's task, once; None for a spent, expired or unknown one."""
        for known in list(self.tickets):
            if hmac.compare_digest(known.encode(), secret.encode()):
                ticket = self.tickets.pop(known)
                return ticket.target if ticket.expires > time.monotonic() else None
        return None

    async def _watch(self) -> None:
        for _ in itertools.count():
            await asyncio.sleep(_WATCH_SECONDS)
            for connection in list(self.connections):
                target = connection.target
                if target is not None and not target.is_running():
                    connection.end(f"{target.label} has stopped")
            await self.book.reap()

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        for connection in list(self.connections):
            connection.end("the host's agent is stopping")
        if self._server is not None:
            await stop_accepting(self._server.sockets)
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 3)


def _leftovers(runs_dir: Path) -> dict[Target, set[int]]:
    """Marked sessions in this host's running tasks, by task. Those of tasks not
    running here are left alone: they may be another agent's on the same machine
    (the test harness's hosts share one process table); an isolated task's stop
    kills its sessions with its cgroup anyway."""
    marked = marked_sessions()
    found: dict[Target, set[int]] = {}
    for task_dir in live_task_dirs(runs_dir):
        started = read_json(TaskFiles(task_dir).started) or {}
        env = proctree.environment(int(started.get("pid", 0))) if started.get("pid") else None
        if not env or not env.get("FLOTILLA_RANK", "").isdigit():
            continue
        run_id, rank = env.get("FLOTILLA_RUN_ID", ""), int(env["FLOTILLA_RANK"])
        label = f"run {run_id} rank {rank}"
        target = task_target(label, run_id, rank, int(started["pid"]), ())
        if target is not None and (run_id, rank) in marked:
            found[target] = marked[(run_id, rank)]
    return found


class RelayConnection(asyncssh.SSHServer):
    """One gateway connection, for one ticket's task."""

    def __init__(self, relay: SessionRelay) -> None:
        self.relay = relay
        self.conn: asyncssh.SSHServerConnection | None = None
        self.target: Target | None = None
        self.shells: set[TaskShell] = set()

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.relay.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.relay.connections.discard(self)
        for shell in list(self.shells):
            shell.end("")

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        if username != RELAY_USER or self.target is not None:
            return False
        self.target = self.relay.redeem(password)
        if self.target is None:
            log.warning("session relay: a login with no valid ticket was refused")
        return self.target is not None

    def session_requested(self) -> Any:
        assert self.target is not None
        return TaskShell(self.target, self.shells, self.relay.book)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        if self.target is None or self.conn is None:
            raise prohibited("no task")
        sessions = [s.session_id for s in self.shells]
        return forward_into(self.conn, self.target, sessions, dest_host, dest_port)

    def end(self, message: str) -> None:
        for shell in list(self.shells):
            shell.end(message)
        if self.conn is not None:
            self.conn.close()
