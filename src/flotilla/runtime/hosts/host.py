"""One host of a `HostNetwork`: a network namespace with its own address, plus a
mount and a UTS namespace pinned to files, so that its processes see their own
hostname, /etc/hosts, resolv.conf, disk and temporary directories.

`HostNetwork.add_host()` creates hosts; callers (tests, later the sim cloud) run
processes on them with `run()`/`popen()`, or, for asyncio, `argv_on_host()` with
`asyncio.create_subprocess_exec`."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from flotilla.runtime.hosts.commands import (
    HostError,
    kill_namespace_processes,
    namespace_ids,
    namespace_pids,
    run_command,
)

# Where each host's own disk is mounted, and its data dir on that disk: same path on
# every host, like a fleet of real machines.
DATA_ROOT = Path("/srv")
DATA_DIR = DATA_ROOT / "flotilla"
INTERFACE = "eth0"

_Stream = int | IO[Any] | None


@dataclass(frozen=True)
class HostLayout:
    """Everything a host is made of, by name, so that teardown needs nothing else."""

    name: str
    address: str
    prefix_len: int
    gateway: str
    netns: str  # under /run/netns
    veth: str  # the bridge end, in the root namespace
    mnt_pin: Path
    uts_pin: Path
    etc_dir: Path  # its hosts, resolv.conf and hostname files

    @property
    def netns_path(self) -> Path:
        return Path("/run/netns") / self.netns


@dataclass
class Host:
    """A host: its name, address and data dir, processes run in it, its link."""

    layout: HostLayout
    bridge: str
    _on_remove: Callable[[Host], None]
    _children: list[subprocess.Popen[bytes]] = field(default_factory=list)
    removed: bool = False

    @property
    def name(self) -> str:
        return self.layout.name

    @property
    def address(self) -> str:
        return self.layout.address

    @property
    def data_dir(self) -> Path:
        """The host's own data dir (a path inside the host; empty outside it)."""
        return DATA_DIR

    @property
    def interface(self) -> str:
        """Its network interface inside the host (for GLOO_SOCKET_IFNAME and the like)."""
        return INTERFACE

    def argv_on_host(self, argv: Sequence[str], cwd: str | Path | None = None) -> list[str]:
        """The argv that runs `argv` on this host (nsenter into its namespaces).

        nsenter and env exec the command in place (no PID namespace, no fork), so the
        pid of the spawned process is the command's own. `cwd` is a path on the host
        (default its data dir)."""
        if self.removed:
            raise HostError(list(argv), f"host {self.name} was removed")
        if not argv or "=" in argv[0]:
            # `env` would take a first word with "=" for a variable, not the command.
            raise HostError(list(argv), "needs a command name without '='")
        lay = self.layout
        return [
            "nsenter",
            f"--net={lay.netns_path}",
            f"--mount={lay.mnt_pin}",
            f"--uts={lay.uts_pin}",
            "--",
            # nsenter's own --wd opens the directory before entering the namespaces,
            # i.e. the machine's path, not the host's; env -C changes it inside.
            "env",
            "-C",
            str(cwd or DATA_DIR),
            "--",
            *argv,
        ]

    def env_on_host(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        """A fresh environment, as a login on another machine would get, plus `env`.

        The caller's environment (tokens, the server's data dir) is not passed on:
        a real host would not have it. PATH is kept since the binaries are shared."""
        base = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": "/root",
            "LANG": "C.UTF-8",
            "HOSTNAME": self.name,
        }
        return {**base, **(env or {})}

    def popen(
        self,
        argv: Sequence[str],
        *,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        stdin: _Stream = subprocess.DEVNULL,
        stdout: _Stream = None,
        stderr: _Stream = None,
        start_new_session: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` on the host; the caller waits for it, or `remove()`/`close()`
        kill it and close its pipes."""
        proc = subprocess.Popen(
            self.argv_on_host(argv, cwd),
            env=self.env_on_host(env),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=start_new_session,
        )
        self._children.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
        timeout: float | None = 60.0,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` on the host to completion and capture its output (text).

        With `check`, a non-zero exit raises HostError carrying its stderr."""
        done = subprocess.run(
            self.argv_on_host(argv, cwd),
            env=self.env_on_host(env),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise HostError(argv, f"exit {done.returncode} on {self.name}: {done.stderr.strip()}")
        return done

    def link_down(self) -> None:
        """Cut the host off the network, like a pulled cable: processes keep running,
        new connections to or from it time out (or fail once ARP gives up, ~3 s)."""
        run_command(["ip", "link", "set", self.layout.veth, "down"])

    def link_up(self) -> None:
        run_command(["ip", "link", "set", self.layout.veth, "up"])

    @property
    def ns_files(self) -> list[Path]:
        """The files that pin its namespaces; a process in any of them is on the host."""
        return [self.layout.netns_path, self.layout.mnt_pin]

    def pids(self) -> list[int]:
        """Every process running on the host (in its network or mount namespace)."""
        return namespace_pids(namespace_ids(self.ns_files))

    def kill_all(self) -> None:
        """SIGKILL every process on the host and reap the ones this object started."""
        self.kill_children()
        left = kill_namespace_processes(namespace_ids(self.ns_files))
        left += self.reap()
        if left:
            raise HostError(["kill", "-9", *map(str, left)], f"processes survive on {self.name}")

    def kill_children(self) -> None:
        """SIGKILL the processes `popen()` started, by pid (safe: not reaped yet). A
        namespace scan alone could miss one still inside nsenter, not yet entered."""
        for proc in self._children:
            if proc.poll() is None:
                proc.kill()

    def reap(self) -> list[int]:
        """Wait for the processes started by `popen()` once they are killed, so that
        none stays a zombie; returns the pids that did not end."""
        left = []
        for proc in self._children:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                left.append(proc.pid)
            # As Popen's context manager would: the process is gone, its pipes too.
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self._children.clear()
        return left

    def remove(self) -> None:
        """Kill everything on the host and delete it; a second call does nothing."""
        if not self.removed:
            self._on_remove(self)
