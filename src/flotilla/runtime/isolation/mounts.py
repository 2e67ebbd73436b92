"""The task's private view of the file system: the control plane's files hidden.

The supervisor calls `hide` once, before setup: it moves itself into a new mount
namespace (so every process of the task, setup included, shares that one view, and
nothing done here is seen outside), makes every mount private (no propagation back
to the host), and covers each path to hide with an empty tmpfs (a file with
/dev/null). If the task's own directory lies under a hidden path, it is bound back
in at its own path, so the task sees its own files and nothing else there. Python
3.11 has no os.unshare or os.mount: libc through ctypes.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


class _Libc:
    def __init__(self) -> None:
        self.lib = ctypes.CDLL(
            None, use_errno=True
        )  # libc is loaded: no find_library (it forks ldconfig)

    def call(self, what: str, result: int) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    def unshare(self, flags: int) -> None:
        self.call("unshare", self.lib.unshare(ctypes.c_int(flags)))

    def mount(self, source: str, target: str, fstype: str | None, flags: int, data: str) -> None:
        result = self.lib.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        )
        self.call(f"mount {target}", result)


def mount_namespace_works() -> bool:
    """Whether this process may make a private mount namespace (root, and not
    refused by a seccomp filter or an LSM). Tried in a child: nothing changes here."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _Libc().unshare(CLONE_NEWNS)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def hide(paths: list[str], keep: list[str]) -> list[str]:
    """Enter a private mount namespace in which each existing path in `paths` is
    empty, except the directories in `keep` (the task's own, its checkpoint dir),
    each bound back at its own path. Returns the paths hidden. Raises OSError."""
    libc = _Libc()
    libc.unshare(CLONE_NEWNS)
    libc.mount("none", "/", None, MS_REC | MS_PRIVATE, "")
    targets: list[str] = []
    for path in sorted({os.path.realpath(p) for p in paths if os.path.lexists(p)}, key=len):
        if not any(_under(path, t) for t in targets):  # inside one hidden already
            targets.append(path)
    covered: list[str] = []
    for path in sorted({os.path.realpath(k) for k in keep}, key=len):
        hidden = any(_under(path, t) for t in targets if os.path.isdir(t))
        if hidden and not any(_under(path, c) for c in covered):  # not inside one kept
            covered.append(path)
    # Opened before the tmpfs covers them: afterwards their paths lead into it.
    keep_fds = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in covered]
    try:
        for target in targets:
            if os.path.isdir(target):
                libc.mount("flotilla-hidden", target, "tmpfs", 0, "mode=0711,size=64k")
            else:
                libc.mount("/dev/null", target, None, MS_BIND, "")
        for path, fd in keep_fds:
            # The tmpfs has only what we make in it: the path down to what is kept.
            _make_way(Path(path))
            libc.mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, "")
    finally:
        for _, fd in keep_fds:
            os.close(fd)
    return targets


def _make_way(path: Path) -> None:
    """The directories down to `path` in a hiding tmpfs, 0755 whatever the umask:
    listing them shows only the way to the task's own directories."""
    for directory in [p for p in [*reversed(path.parents), path] if not p.exists()]:
        directory.mkdir()
        os.chmod(directory, 0o755)  # noqa: S103 - holds nothing but these directories


def closed_ancestor(path: str, uid: int, gids: tuple[int, ...]) -> str | None:
    """The highest directory above `path` that `uid` may not pass through (a 0700
    /root or pytest's 0700 temporary root): covering it costs the user nothing it
    could see, and the path down to the task's directory is made in the tmpfs."""
    current = Path(os.path.realpath(path))
    closed = None
    for ancestor in current.parents:
        try:
            st = ancestor.stat()
        except OSError:
            continue
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid in gids:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            closed = str(ancestor)
    return closed


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")
