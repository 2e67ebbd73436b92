"""Container images on a node: which runtime the node has, and its configuration.

The agent detects the runtime once at start (`detect`, through
`NodeIsolation.detect`), writes the containers.conf its podman calls use into its
own directory, reports `summary()` in its `hello` answer, and every supervisor
gets the result: a task whose spec has an `image` runs each of its processes in a
container of that image (`task.py`, `argv.py`) when the runtime is there, and as
host processes, saying so, when it is not. The server's local backend asks
`unavailable_reason()` (cheap: no process started) for the line in the run's
events; its agent inherits the server's PATH and user, so both see the same.

Only rootful podman with runc is used: on this kind of machine crun fails
("cgroups in hybrid mode not supported") and rootless podman can apply no limits.
The containers.conf is the agent's own (`CONTAINERS_CONF`: podman then reads no
other), so the node's /etc/containers/containers.conf cannot change what a task
gets; image storage stays podman's (or `CONTAINERS_STORAGE_CONF`'s), so images an
admin imported or pulled are the ones tasks find.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CONF_NAME = "containers.conf"
_RUNC_PATHS = ("/usr/bin/runc", "/usr/sbin/runc", "/usr/local/bin/runc", "/usr/local/sbin/runc")
_INIT_PATHS = ("/usr/libexec/podman/catatonit", "/usr/bin/catatonit")
# Podman's own processes (and so runc, which sets the container's limits) run with a
# hard nproc of 32768 here: a container asking for more fails to start.
_PODMAN_NPROC = 32768


@dataclass(frozen=True)
class ContainerRuntime:
    """The node's container runtime; `available` False means tasks with an image
    run as host processes, and `reason` says why."""

    available: bool
    reason: str = ""
    program: str = ""  # podman's path
    version: str = ""
    oci_runtime: str = ""  # runc's path
    init: bool = False  # catatonit as each container's PID 1: a stop's SIGTERM is delivered
    conf: str = ""  # the containers.conf written for the agent's podman calls

    @classmethod
    def none(cls, reason: str) -> ContainerRuntime:
        return cls(False, reason)

    def summary(self) -> str:
        if not self.available:
            return f"none: {self.reason}"
        return f"podman {self.version} ({Path(self.oci_runtime).name})"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def client_env(self) -> dict[str, str]:
        """The environment of a podman command: the agent's own (never a task's:
        its variables could redirect podman, which runs as root) and the conf."""
        return {**os.environ, "CONTAINERS_CONF": self.conf}


def find_runc() -> str | None:
    return shutil.which("runc") or next((p for p in _RUNC_PATHS if os.access(p, os.X_OK)), None)


def unavailable_reason() -> str | None:
    """Why this process's node cannot run containers, or None if it can."""
    if os.geteuid() != 0:
        return f"the agent runs as uid {os.geteuid()}, not root: only rootful podman is used"
    if shutil.which("podman") is None:
        if shutil.which("docker"):
            return "no podman on PATH (docker is, but only podman is supported)"
        return "no podman or docker on PATH"
    if find_runc() is None:
        return "podman is on PATH but runc is not (crun fails on hybrid cgroups)"
    return None


def detect(state_dir: Path) -> ContainerRuntime:
    """Look for rootful podman with runc (`podman --version`: ~50 ms) and write
    the agent's containers.conf into `state_dir`."""
    if (reason := unavailable_reason()) is not None:
        return ContainerRuntime.none(reason)
    podman, runc = shutil.which("podman"), find_runc()
    assert podman is not None and runc is not None
    try:
        done = subprocess.run(
            [podman, "--version"], capture_output=True, text=True, timeout=15, check=True
        )
    except (OSError, subprocess.SubprocessError) as e:
        return ContainerRuntime.none(f"podman --version failed: {e}")
    init = next((p for p in _INIT_PATHS if os.access(p, os.X_OK)), None)
    conf = state_dir / CONF_NAME
    try:
        write_conf(conf, runc, init)
    except OSError as e:
        return ContainerRuntime.none(f"cannot write {conf}: {e}")
    version = done.stdout.split()[-1] if done.stdout.split() else "?"
    return ContainerRuntime(True, "", podman, version, runc, init is not None, str(conf))


def write_conf(path: Path, runc: str, init: str | None) -> None:
    """The settings podman 4 needs on a node like this one: runc, cgroupfs (no
    systemd to ask), events in a file (no journald), and rlimits the agent can
    grant (root without CAP_SYS_RESOURCE cannot raise a hard limit: every run
    would fail in setrlimit). Written atomically: running tasks may read it."""
    nofile = _hard(resource.RLIMIT_NOFILE, 1 << 20)
    nproc = min(_hard(resource.RLIMIT_NPROC, _PODMAN_NPROC), _PODMAN_NPROC)
    lines = [
        "# Written by the Flotilla agent for its tasks' containers (CONTAINERS_CONF).",
        "[containers]",
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]',
        "[engine]",
        'runtime = "runc"',
        'cgroup_manager = "cgroupfs"',
        'events_logger = "file"',
        *([f"init_path = {_quoted(init)}"] if init else []),
        "[engine.runtimes]",
        f"runc = [{_quoted(runc)}]",
    ]
    partial = path.with_name(path.name + ".tmp")
    partial.write_text("\n".join(lines) + "\n")
    partial.replace(path)


def _hard(which: int, unlimited: int) -> int:
    hard = resource.getrlimit(which)[1]
    return unlimited if hard == resource.RLIM_INFINITY else int(hard)


def _quoted(value: str) -> str:
    """A TOML basic string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


__all__ = ["ContainerRuntime", "detect", "unavailable_reason", "write_conf"]
