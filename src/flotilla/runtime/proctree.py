"""What a running task's processes hold, read from Linux's /proc: their environment,
working directory, session, and the TCP addresses they listen on.

The SSH gateway (`server/ssh`) uses it to open a shell *inside* a task (same
environment, same directory) and to allow port forwarding only to sockets the
task's own processes listen on. Reads only; never signals anything.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable
from pathlib import Path

from flotilla.runtime.procs import stat_fields

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def environment(pid: int) -> dict[str, str] | None:
    """The environment the process was started with, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env: dict[str, str] = {}
    for entry in raw.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            env[name.decode(errors="replace")] = value.decode(errors="replace")
    return env


def working_directory(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def session_id(pid: int) -> int | None:
    """The process's session id (what `setsid` starts), or None if it is gone."""
    fields = stat_fields(pid)
    return int(fields[3]) if fields is not None else None


def processes_by_session() -> dict[int, list[int]]:
    """Every live process, grouped by session id: one pass over /proc."""
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (sid := session_id(int(entry))) is not None:
            found.setdefault(sid, []).append(int(entry))
    return found


def processes_in_sessions(sessions: Iterable[int]) -> list[int]:
    """Every live process whose session is one of `sessions`."""
    by_session = processes_by_session()
    return [pid for sid in set(sessions) for pid in by_session.get(sid, [])]


def listeners(pids: Iterable[int]) -> set[tuple[str, int]]:
    """The (address, port) of each TCP socket (IPv4 or IPv6) that one of `pids`
    listens on; `0.0.0.0` and `::` for any address."""
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and fields[9] in inodes:
                address, port = fields[1].rsplit(":", 1)
                found.add((_address(address, family), int(port, 16)))
    return found


def _address(hex_address: str, family: int) -> str:
    """/proc/net/tcp's address: the kernel's bytes in 32-bit words of host order."""
    raw = bytes.fromhex(hex_address)
    if sys.byteorder == "little":
        raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return socket.inet_ntop(family, raw)
