"""The `podman run` command line of one process of a task, and what goes with it:
its environment file, its bind mounts, its GPUs. Pure functions (the env file
aside) called by `task.py`; unit-tested without podman.

Every path a task knows (its working dir, checkpoint dir, secret files) is bound
at the same path inside, so the environment's paths stay true. The environment
never appears on a command line (/proc/*/cmdline is world-readable; secrets are in
it): it goes through `--env-file`, a 0600 root file in the task directory, which
is not mounted. The host's own variables (PATH, HOME, SHELL, ...) are left out:
the image's apply.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flotilla.runtime.taskspec import Limits

CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))  # where podman 4.3 looks
NVIDIA_CDI_KIND = "nvidia.com/gpu"
_NVIDIA_SHARED = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")
# The host's, not the task's: inside an image its own PATH, HOME and shell apply.
HOST_ONLY = frozenset({"PATH", "SHELL", "TMPDIR", "HOME", "USER", "LOGNAME"})
ACCOUNT = ("HOME", "USER", "LOGNAME")  # kept when they name the task's own account
# A reference as docker and podman spell one: it can never be taken for an option.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,500}")
# A string command: bash where the image has it (as on the host), else its sh.
_SHELL = 'if [ -x /bin/bash ]; then exec /bin/bash -c "$1"; fi; exec /bin/sh -c "$1"'


class ContainerError(Exception):
    """The task cannot run in its image as asked; the message is for its log."""


@dataclass(frozen=True)
class ContainerProcess:
    """Everything one `podman run` needs."""

    name: str
    image: str
    command: list[str]
    workdir: str
    env_file: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    mounts: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    limits: Limits | None = None
    shm_bytes: int | None = None
    cgroup_parent: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    own_account: bool = False  # runs as the task's account: no privileges at all
    init: bool = False


def check_image(image: str) -> str:
    if not _IMAGE.fullmatch(image):
        raise ContainerError(f"image {image!r} is not an image reference")
    return image


def run_argv(podman: str, p: ContainerProcess) -> list[str]:
    argv = [podman, "run", "--rm", "--name", p.name, "--network", "host", "--log-driver", "none"]
    argv += ["--user", f"{p.uid}:{p.gid}", "--workdir", p.workdir, "--env-file", p.env_file]
    argv += [f"--group-add={g}" for g in dict.fromkeys(p.groups) if g != p.gid]
    argv += [f"--label={k}={v}" for k, v in p.labels.items()]
    argv += ["--init"] if p.init else []
    if p.own_account:
        argv += ["--cap-drop", "all", "--security-opt", "no-new-privileges"]
    argv += [f"--volume={path}:{path}" for path in p.mounts]
    argv += [f"--device={d}" for d in p.devices]
    argv += [f"--cgroup-parent={p.cgroup_parent}"] if p.cgroup_parent else []
    argv += _limits(p.limits)
    argv += [f"--shm-size={p.shm_bytes}"] if p.shm_bytes else []
    # No entrypoint of the image's: the command is the whole command, as on the host.
    return [*argv, "--entrypoint", "", "--", check_image(p.image), *p.command]


def _limits(limits: Limits | None) -> list[str]:
    if limits is None:
        return []
    args = []
    if limits.memory_bytes is not None:  # RAM only, no swap beyond it (as on the host)
        args += [f"--memory={limits.memory_bytes}", f"--memory-swap={limits.memory_bytes}"]
    if limits.cpus is not None:
        args.append(f"--cpus={limits.cpus:g}")
    if limits.pids is not None:
        args.append(f"--pids-limit={limits.pids}")
    return args


def command(argv: list[str] | None, shell: str | None) -> list[str]:
    """A list command as is (found on the image's PATH), a string through a shell."""
    if argv is not None:
        return list(argv)
    return ["/bin/sh", "-c", _SHELL, "sh", shell or ""]


def container_env(env: dict[str, str], own_account: bool, gpus: int | None) -> dict[str, str]:
    """The task's environment as the container gets it: without the host's own
    variables (an account's HOME/USER/LOGNAME kept), and with the GPUs passed in
    numbered from 0, as the container sees them."""
    kept = ACCOUNT if own_account else ()
    inside = {k: v for k, v in env.items() if k not in HOST_ONLY or k in kept}
    if gpus is not None and "CUDA_VISIBLE_DEVICES" in inside:
        inside["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(gpus))
    return inside


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """KEY=VALUE lines, 0600, replaced whole. podman reads one line per variable:
    a value with a line break cannot be passed, and is refused by name only."""
    for key, value in env.items():
        if "\n" in value or "\r" in value or "\0" in value:
            raise ContainerError(f"environment variable {key} holds a line break or NUL")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}={v}\n" for k, v in env.items()))


def bind_paths(task_dir: str, paths: Iterable[str], keep: Iterable[str]) -> list[str]:
    """What to bind: for each path inside the task directory its first level below
    it (`root/`, `home/`: never the directory itself, which holds the env files
    and the records the supervisor trusts), other paths and `keep` as they are;
    none twice, none inside another."""
    top = Path(task_dir)
    wanted: set[Path] = set()
    for given in [*paths, *keep]:
        p = Path(given)
        if p.is_relative_to(top) and p != top:
            wanted.add(top / p.relative_to(top).parts[0])
        elif p != top:
            wanted.add(p)
    chosen: list[Path] = []
    for p in sorted(wanted, key=lambda q: len(q.parts)):
        if not any(p.is_relative_to(c) for c in chosen):
            chosen.append(p)
    for p in chosen:
        if ":" in str(p) or "," in str(p):
            raise ContainerError(f"cannot bind {p} into a container (':' or ',' in it)")
    return sorted(str(p) for p in chosen)


def gpu_devices(
    visible: str | None, cdi_dirs: Sequence[Path] = CDI_DIRS, dev: Path = Path("/dev")
) -> tuple[list[str], int]:
    """The `--device` values for the task's CUDA_VISIBLE_DEVICES, and how many GPUs
    they pass: CDI names where the node has NVIDIA's CDI spec (devices, driver
    libraries and all), else the device nodes (the image must then bring the
    driver's user-space libraries); nothing when neither is there."""
    gpus = [g.strip() for g in (visible or "").split(",") if g.strip()]
    if not gpus:
        return [], 0
    if has_nvidia_cdi(cdi_dirs):
        return [f"{NVIDIA_CDI_KIND}={g}" for g in gpus], len(gpus)
    nodes = [dev / f"nvidia{g}" for g in gpus if g.isdigit() and (dev / f"nvidia{g}").exists()]
    if not nodes:
        return [], 0
    shared = [dev / name for name in _NVIDIA_SHARED if (dev / name).exists()]
    return [str(n) for n in [*nodes, *shared]], len(nodes)


def has_nvidia_cdi(cdi_dirs: Sequence[Path] = CDI_DIRS) -> bool:
    for directory in cdi_dirs:
        try:
            specs = sorted(directory.iterdir())
        except OSError:
            continue
        for spec in specs:
            if spec.suffix in (".json", ".yaml", ".yml"):
                try:
                    if NVIDIA_CDI_KIND in spec.read_text(errors="replace"):
                        return True
                except OSError:
                    continue
    return False
