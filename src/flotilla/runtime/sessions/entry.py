"""How an SSH session enters an isolated task (docs/isolation.md): with the task's
uid, gid and groups, in its mount namespace (the control plane's files hidden) and
in its cgroup (its limits apply, a stop's `cgroup.kill` ends the session too), with
no new privileges. Used by `TaskShell` (shell.py) before it starts a process.

What the task is made of is read from its own process, not from files: the ids from
/proc/PID/status, the cgroup from /proc/PID/cgroup, the namespace from
/proc/PID/ns/mnt (opened here, so the namespace is the one of the process checked).
A task whose process runs as the server's own user is not isolated: it gets no
entry, and its sessions start as they always have.

The process is started through `_ENTER`, a tiny program run by the server's
interpreter (as the pty path's login_tty one was), because the server process must
not fork Python itself and posix_spawn can neither join a cgroup, setns nor change
credentials. One interpreter start (`-I -S`: no site, no imports but ctypes) is
cheaper than chaining nsenter, setpriv and a cgroup-joining helper, and gives the
terminal path its controlling terminal in the same step. Any failure there is said
on stderr and exits 1: never a process that runs as root.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from flotilla.runtime.isolation.cgroups import discover

# argv: ns fd, env fd, uid, gid, groups ("1,2"), tty ("1"/"0"), cwd, count, count
# procs files, then the command. The helper starts with an empty environment: the
# task's (which its user sets: LD_PRELOAD…) must not reach a process that is still
# root, nor other users' eyes in /proc/PID/cmdline; it comes in a memfd and is only
# the command's. Order: join the cgroup (as root: the files are root's), enter the
# namespace, take the terminal, drop to the user, then chdir as the user.
_ENTER = """
import ctypes, os, sys, warnings  # warnings: execvpe needs it, and after the drop
# the interpreter's library may be out of the user's reach (a venv under /root)
def enter(a):
    fd, env_fd, uid, gid = int(a[1]), int(a[2]), int(a[3]), int(a[4])
    tty, cwd, n = a[6] == "1", a[7], int(a[8])
    procs, argv = a[9 : 9 + n], a[9 + n :]
    with os.fdopen(env_fd, "rb") as f:
        env = dict(v.split(b"=", 1) for v in f.read().split(b"\\0") if b"=" in v)
    for path in procs:
        with open(path, "w") as f:
            f.write("0")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x00020000) != 0:
        raise OSError(ctypes.get_errno(), "setns: " + os.strerror(ctypes.get_errno()))
    os.close(fd)
    if tty:
        os.login_tty(0)
    os.setgroups([int(g) for g in a[5].split(",") if g])
    os.setgid(gid)
    os.setuid(uid)
    if libc.prctl(38, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(NO_NEW_PRIVS)")
    try:
        os.chdir(cwd)
    except OSError:
        os.chdir("/")
    os.execvpe(argv[0], argv, env)
try:
    enter(sys.argv)
except BaseException as e:
    sys.stderr.write("flotilla: cannot enter the task: %r\\r\\n" % (e,))
    sys.stderr.flush()
    os._exit(1)
"""


class CannotEnter(Exception):
    """The task is isolated but something needed to enter it is missing; the
    message is for the user, and the session must not start."""


@dataclass(frozen=True)
class TaskEntry:
    """An isolated task's credentials and view; `ns_fd` is open until `close`."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    cgroup_procs: tuple[str, ...]
    ns_fd: int

    def start(
        self, command: list[str], env: dict[str, str], cwd: str, tty: bool
    ) -> tuple[list[str], int]:
        """The argv that enters the task and runs `command` with `env` there, and
        the fd (a memfd with `env`) to pass with `ns_fd`; the caller closes it.
        The helper itself is to be started with an empty environment."""
        env_fd = os.memfd_create("flotilla-ssh-env", os.MFD_CLOEXEC)
        try:
            os.write(env_fd, b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items()))
            os.lseek(env_fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(env_fd)
            raise
        head = [sys.executable, "-I", "-S", "-c", _ENTER, str(self.ns_fd), str(env_fd)]
        head += [str(self.uid), str(self.gid), ",".join(str(g) for g in self.groups)]
        head += ["1" if tty else "0", cwd, str(len(self.cgroup_procs)), *self.cgroup_procs]
        return [*head, *command], env_fd

    def close(self) -> None:
        os.close(self.ns_fd)


def task_entry(pid: int) -> TaskEntry | None:
    """How to enter the task whose process is `pid`; None when it runs as the
    server's own user (no isolation). Raises CannotEnter."""
    ids = _ids(pid)
    if ids is None:
        raise CannotEnter("the task's process is gone")
    uid, gid, groups = ids
    if uid == os.getuid():
        return None
    layout = discover(Path(f"/proc/{pid}"))
    procs = tuple(str(d / "cgroup.procs") for d in layout.bases.values())
    if not procs or not all(os.path.exists(p) for p in procs):
        raise CannotEnter("the task runs as its user's account, but its cgroup was not found")
    try:
        ns_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CannotEnter(f"the task's mount namespace is gone ({e.strerror})") from e
    # The pid may have been reused between the reads: the namespace is the task's
    # only if the process still has the same ids.
    if _ids(pid) != ids:
        os.close(ns_fd)
        raise CannotEnter("the task's process is gone")
    return TaskEntry(uid, gid, groups, procs, ns_fd)


def _ids(pid: int) -> tuple[int, int, tuple[int, ...]] | None:
    """Real uid, real gid and supplementary groups of `pid`, from its status."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    fields = {k: v.split() for k, _, v in (line.partition(":") for line in lines)}
    try:
        return int(fields["Uid"][0]), int(fields["Gid"][0]), tuple(map(int, fields["Groups"]))
    except (KeyError, IndexError, ValueError):
        return None
