"""Starting one confined process: in the task's cgroup, as the task's user.

posix_spawn can neither join a cgroup nor change credentials, so a confined
process is started with fork, and the child, still root, writes itself into the
task's cgroup (so everything it starts is inside before it can run any of the
task's code), opens its log, drops to the user (setgroups, setgid, setuid,
no_new_privs: a setuid binary cannot give it back) and execs. Fork of the
supervisor (a forked agent with frozen GC pages) costs about a millisecond; the
child runs only the few calls below. A failure before exec comes back on a
close-on-exec pipe as an OSError in the parent, as with posix_spawn.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PR_SET_NO_NEW_PRIVS = 38


@dataclass(frozen=True)
class Credentials:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def drop(self) -> None:
        """Become this user for good (real, effective and saved ids); no privilege
        can come back through exec."""
        os.setgroups(list(dict.fromkeys((self.gid, *self.groups))))
        os.setgid(self.gid)
        os.setuid(self.uid)
        libc = ctypes.CDLL(
            None, use_errno=True
        )  # libc is loaded: no find_library (it forks ldconfig)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(NO_NEW_PRIVS): {os.strerror(err)}")


@dataclass(frozen=True)
class Confinement:
    """What a task's process enters before exec: cgroup.procs files to write itself
    into, and the credentials to drop to (None: stay as the supervisor)."""

    cgroup_procs: tuple[str, ...] = ()
    credentials: Credentials | None = None
    default_signals: tuple[int, ...] = field(default=())

    def join_cgroup(self) -> None:
        for procs in self.cgroup_procs:
            with open(procs, "w") as f:
                f.write("0")  # "0": the writing process itself


def spawn_confined(
    program: str,
    argv: Sequence[str],
    env: dict[str, str],
    *,
    confinement: Confinement,
    log: str,
    pgid: int,
    cwd: str | None = None,
) -> int:
    """fork + exec `program` with stdout and stderr appended to `log` (opened
    before the credentials drop: it stays the supervisor's file), stdin from
    /dev/null, in process group `pgid` (0: its own). Returns the pid; raises
    OSError if it could not be started."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    blocked = set(confinement.default_signals)
    # A stop arriving between fork and exec must not run the supervisor's handler
    # in the child: block until the child has its default handlers.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child; its failures come back on the pipe
        _child(program, argv, env, confinement, log, pgid, cwd, write_end, old_mask)
    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        failure = pipe.read()  # EOF at exec
    if failure:
        os.waitpid(pid, 0)
        raise _decode(failure)
    return pid


def _child(
    program: str,
    argv: Sequence[str],
    env: dict[str, str],
    confinement: Confinement,
    log: str,
    pgid: int,
    cwd: str | None,
    report: int,
    mask: set[int | signal.Signals],
) -> None:
    try:
        for sig in confinement.default_signals:
            signal.signal(sig, signal.SIG_DFL)
        os.setpgid(0, pgid)
        confinement.join_cgroup()
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        if confinement.credentials is not None:
            confinement.credentials.drop()
        if cwd is not None:
            os.chdir(cwd)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        try:
            os.execve(program, list(argv), env)  # noqa: S606 - an argv list, no shell
        except PermissionError:
            # Found on PATH by root (a venv under /root) but not executable by the
            # user: look further along PATH, as a shell running as the user would.
            if "/" in argv[0]:
                raise
            os.execvpe(argv[0], list(argv), env)  # noqa: S606
    except BaseException as e:
        os.write(report, _encode(e))
    finally:
        os._exit(127)


def run_as_user(credentials: Credentials, work: Callable[[], None]) -> None:
    """Run `work` (file system setup) in a child that has become the user, so what
    it creates is the user's, made by the user: no chown of paths a user could
    have swapped. Raises OSError with the child's error."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            credentials.drop()
            work()
        except BaseException as e:
            os.write(write_end, _encode(e))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        failure = pipe.read()
    os.waitpid(pid, 0)
    if failure:
        raise _decode(failure)


def _encode(e: BaseException) -> bytes:
    """An error in the child, for the parent: errno, message and file name."""
    if isinstance(e, OSError):
        parts = [str(e.errno or 0), e.strerror or str(e), str(e.filename or "")]
    else:
        parts = ["0", repr(e), ""]
    return "\0".join(parts).encode(errors="replace")


def _decode(data: bytes) -> OSError:
    number, message, filename = [*data.decode(errors="replace").split("\0"), "", ""][:3]
    if filename:
        return OSError(int(number or 0), message, filename)
    return OSError(int(number or 0), message)
