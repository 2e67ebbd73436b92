"""One task's containers, for its supervisor (runtime/supervisor.py): one
`podman run --rm` per process (and one for the start script), each a child of the
supervisor in the task's process group, so the supervisor's waiting, its gang
rule and its exit codes stay as they are (podman exits with its container's
code; an OOM kill is 137).

Stopping: a SIGTERM to the group reaches each podman, which passes it to its
container (to catatonit as PID 1 where the node has it, else to the command).
SIGKILL cannot be passed on: the container lives on under conmon, outside the
group and outside the unified cgroup that `cgroup.kill` empties on a hybrid node.
So at the end of the grace period, and after any task that did not end cleanly,
`remove` force-removes the task's containers by name: none outlives its task.

Cgroups: the containers go below the task's own group (`cgroups.py`), and
`cleanup` removes what podman made around them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from flotilla.runtime.containers import CONF_NAME, ContainerRuntime
from flotilla.runtime.containers.argv import (
    ContainerError,
    ContainerProcess,
    bind_paths,
    check_image,
    command,
    container_env,
    gpu_devices,
    run_argv,
    write_env_file,
)
from flotilla.runtime.containers.cgroups import ContainerCgroups
from flotilla.runtime.isolation import NodeIsolation
from flotilla.runtime.isolation.cgroups import group_name
from flotilla.runtime.isolation.task import TaskIsolation
from flotilla.runtime.taskspec import TaskSpec

SETUP = "setup"  # the start script's container, beside the processes' 0, 1, ...
LABEL = "flotilla.task"


class TaskContainers:
    def __init__(
        self,
        spec: TaskSpec,
        runtime: ContainerRuntime,
        isolation: TaskIsolation,
        node: NodeIsolation,
        log: Callable[[str], None],
    ) -> None:
        assert spec.image is not None and runtime.available
        self.spec, self.runtime, self.isolation, self.log = spec, runtime, isolation, log
        self.image = spec.image
        self.prefix = f"flotilla-{group_name(spec.task_id)}-"
        cgroup = isolation.cgroup or node.cgroup_for(spec.task_id)
        self.cgroups = ContainerCgroups(cgroup)
        self.names: list[str] = []  # every container this task may have started
        # The agent's conf may be hidden from the task's mount namespace (it is in
        # the data dir): read now, copied into the task directory by `prepare`.
        try:
            self.conf = Path(runtime.conf).read_text()
        except OSError as e:
            raise ContainerError(f"cannot read the agent's {runtime.conf}: {e}") from e
        self.client_env = {**runtime.client_env(), "CONTAINERS_CONF": str(self._conf_copy)}

    @classmethod
    def for_task(
        cls,
        spec: TaskSpec,
        isolation: TaskIsolation,
        node: NodeIsolation,
        log: Callable[[str], None],
    ) -> TaskContainers | None:
        """The task's containers; None, said in `log`, if it has an image but the
        node no runtime (its processes run on the host, as without an image).
        Before the task's isolation hides the agent's files. Raises ContainerError."""
        if spec.image is None:
            return None
        if not node.containers.available:
            log(f"containers: {node.containers.summary()}: image {spec.image} not used")
            return None
        return cls(spec, node.containers, isolation, node, log)

    def prepare(self) -> None:
        """Before the first container. Raises ContainerError."""
        check_image(self.image)
        try:
            self._conf_copy.write_text(self.conf)
            for kept in self.spec.keep:  # bind sources must exist (with run_as: made already)
                Path(kept).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise ContainerError(f"cannot prepare the task's containers: {e}") from e
        self.cgroups.note_existing()

    @property
    def _conf_copy(self) -> Path:
        return Path(self.spec.task_dir) / CONF_NAME

    def setup_command(self, env: dict[str, str]) -> list[str]:
        """The start script's `podman run` argv. Raises ContainerError."""
        return self._run(SETUP, env, command(None, self.spec.start_script))

    def process_command(self, index: int, env: dict[str, str]) -> list[str]:
        """The `podman run` argv of process `index` (podman's path first), its env
        file written. Raises ContainerError."""
        return self._run(str(index), env, command(self.spec.argv, self.spec.shell))

    def _run(self, suffix: str, env: dict[str, str], cmd: list[str]) -> list[str]:
        credentials = self.isolation.credentials
        visible = env.get("CUDA_VISIBLE_DEVICES")
        devices, gpus = gpu_devices(visible)
        if visible and not devices:
            self.log(f"containers: GPUs {visible} not passed: no NVIDIA CDI spec, no /dev/nvidiaN")
        env_file = Path(self.spec.task_dir) / f"container-{suffix}.env"
        try:
            write_env_file(env_file, container_env(env, credentials is not None, gpus or None))
        except OSError as e:
            raise ContainerError(f"cannot write {env_file}: {e}") from e
        paths = [self.spec.workdir, *(f.path for f in self.spec.files)]
        paths += [g.dest for g in self.spec.git]
        if credentials is not None and self.isolation.home:  # the account's HOME
            paths.append(self.isolation.home)
        limits = self.spec.limits
        process = ContainerProcess(
            name=self.prefix + suffix,
            image=self.image,
            command=cmd,
            workdir=self.spec.workdir,
            env_file=str(env_file),
            uid=credentials.uid if credentials else os.getuid(),
            gid=credentials.gid if credentials else os.getgid(),
            groups=credentials.groups if credentials else (),
            mounts=bind_paths(self.spec.task_dir, paths, self.spec.keep),
            devices=devices,
            limits=limits,
            shm_bytes=(limits.memory_bytes if limits else None) or _half_the_memory(),
            cgroup_parent=self.cgroups.parent,
            labels={LABEL: self.spec.task_id},
            own_account=credentials is not None,
            init=self.runtime.init,
        )
        self.names.append(process.name)
        return run_argv(self.runtime.program, process)

    def remove(self) -> None:
        """Force-remove (SIGKILL) every container of the task; blocks (~0.2 s)."""
        if not self.names:
            return
        argv = [self.runtime.program, "rm", "--force", "--ignore", "--time", "0", *self.names]
        try:
            done = subprocess.run(
                argv, env=self.client_env, capture_output=True, text=True, timeout=60
            )
        except (OSError, subprocess.SubprocessError) as e:
            self.log(f"containers: cannot remove {self.names}: {e}")
            return
        if done.returncode != 0:
            self.log(f"containers: podman rm failed: {done.stderr.strip()}")

    def cleanup(self) -> str:
        """After the task: its env files and what podman made in the cgroup tree."""
        for suffix in [SETUP, *(str(i) for i in range(max(len(self.spec.process_env), 1)))]:
            with contextlib.suppress(FileNotFoundError):
                (Path(self.spec.task_dir) / f"container-{suffix}.env").unlink()
        return self.cgroups.remove()


def _half_the_memory() -> int:
    """/dev/shm as a host has it by default (half the RAM), not podman's 64 MB
    that data loaders and NCCL outgrow; its pages count against the memory limit."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


__all__ = ["SETUP", "ContainerError", "TaskContainers"]
