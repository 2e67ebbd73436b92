"""Port forwarding into a task (`ssh -L`, IDEs): only to an address the task, or a
process started from one of its SSH sessions, listens on, connected to exactly
that socket's address. The gateway applies it to tasks on its machine, a host's
session relay to its own."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable
from typing import Any

import asyncssh

from flotilla.runtime import proctree
from flotilla.runtime.sessions.target import Target

_LOOPBACK = ("localhost", "127.0.0.1", "::1", "ip6-localhost")
_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}


async def forward_into(
    conn: asyncssh.SSHServerConnection,
    target: Target,
    session_ids: Iterable[int | None],
    dest_host: str,
    dest_port: int,
) -> Any:
    """The forward to `dest_host:dest_port` in `target`, or ChannelOpenError saying
    why not. `session_ids`: the connection's own sessions in the task."""
    sessions = {proctree.session_id(target.pid), *session_ids}
    owned = await asyncio.to_thread(_listeners_of, {s for s in sessions if s is not None})
    address = reachable(dest_host, dest_port, owned)
    if address is None:
        raise prohibited(f"nothing in {target.label} listens on {dest_host}:{dest_port}")
    return await conn.forward_connection(address, dest_port)


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


def prohibited(reason: str) -> asyncssh.ChannelOpenError:
    return asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)


def _listeners_of(sessions: set[int]) -> set[tuple[str, int]]:
    return proctree.listeners(proctree.processes_in_sessions(sessions))
