"""The system commands the host harness is made of (`ip`, `unshare`, `nsenter`,
`mount`, `umount`, `hostname`), run as argv lists, with their failures wrapped in one
exception that names the command and carries its stderr, plus `available()`, which says
why this machine cannot make hosts (so tests skip with the reason and the server can
show it) and the helpers that find and kill every process inside a namespace."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from flotilla.errors import FlotillaError

TOOLS = ("ip", "unshare", "nsenter", "mount", "umount", "hostname")
# Commands here are local and quick (~1-3 ms); a minute means something is stuck.
COMMAND_TIMEOUT = 60.0


class HostError(FlotillaError):
    """A command of the host harness failed; says which one and what it printed."""

    def __init__(self, argv: Sequence[str], message: str) -> None:
        self.argv = list(argv)
        super().__init__(f"`{' '.join(argv)}` failed: {message}")


def run_command(argv: Sequence[str], *, input: str | None = None) -> str:
    """Run one setup/teardown command; its stdout, or HostError with its stderr."""
    try:
        done = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostError(argv, str(e)) from e
    if done.returncode != 0:
        raise HostError(argv, f"exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def available(data_root: Path = Path("/srv")) -> tuple[bool, str]:
    """Whether this machine can make hosts, and if not, why not (one line)."""
    if os.geteuid() != 0:
        return False, "needs root (network and mount namespaces, a bridge)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return False, f"missing commands: {', '.join(missing)} (iproute2, util-linux)"
    if not Path("/proc/self/ns/net").exists() or not Path("/proc/self/ns/mnt").exists():
        return False, "the kernel has no network or mount namespaces"
    if not data_root.is_dir():
        # Each host mounts its own disk there; with a read-only root it cannot be made.
        return False, f"no {data_root} directory to mount the hosts' disks on"
    return True, "root, with ip, unshare, nsenter, mount"


NsId = tuple[int, int]  # (device, inode) of a namespace file: its identity


def namespace_ids(ns_files: Sequence[Path]) -> set[NsId]:
    """The identities of the namespaces pinned at these paths (missing ones skipped);
    kept, they still find the namespaces' processes after the pins are gone."""
    ids = set()
    for path in ns_files:
        try:
            st = os.stat(path)
        except OSError:
            continue
        ids.add((st.st_dev, st.st_ino))
    return ids


@contextlib.contextmanager
def held_namespaces(ns_files: Sequence[Path]) -> Iterator[set[NsId]]:
    """`namespace_ids` of these, each namespace kept alive by an open file until the
    block ends, even once its pin is gone: a namespace that ends gives its inode
    number to the next one made on the machine (another network's, in tests run in
    parallel), and a kill by identity would then reach that one's processes. The
    open files keep the pins' mounts busy meanwhile: unmount them lazily."""
    fds = []
    try:
        for path in ns_files:
            with contextlib.suppress(OSError):
                fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
        yield {(st.st_dev, st.st_ino) for st in map(os.fstat, fds)}
    finally:
        for fd in fds:
            os.close(fd)


def namespace_pids(ids: set[NsId]) -> list[int]:
    """Pids of processes whose network or mount namespace is one of `ids`.

    Compared by (device, inode) of /proc/PID/ns/*, like `ip netns pids`, but for the
    mount namespace too and without a process per call. Zombies have no namespaces
    left and are not listed (their parent reaps them)."""
    if not ids:
        return []
    found = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        for kind in ("net", "mnt"):
            try:
                st = os.stat(f"/proc/{entry.name}/ns/{kind}")
            except OSError:
                break  # gone, or a zombie
            if (st.st_dev, st.st_ino) in ids:
                found.append(int(entry.name))
                break
    return found


def kill_namespace_processes(ids: set[NsId], timeout: float = 5.0) -> list[int]:
    """SIGKILL every process inside these namespaces until none is left.

    Repeated because a process may fork between the scan and the kill; returns the
    pids that were still there at the deadline (normally none)."""
    deadline = time.monotonic() + timeout
    while True:
        pids = namespace_pids(ids)
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def mounted_paths() -> set[str]:
    """Mount points of this process's mount namespace (octal escapes decoded)."""
    points = set()
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if len(fields) > 1:
            points.add(fields[1].encode().decode("unicode_escape"))
    return points
