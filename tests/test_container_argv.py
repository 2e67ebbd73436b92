"""The `podman run` command line of a task's process (runtime/containers), without
podman: what is mounted, who it runs as, its limits, its cgroup parent, its GPUs
(CDI or device nodes; no GPU on the test machine), and that the environment goes
through a 0600 file, never the command line."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from flotilla.runtime.containers import ContainerRuntime, write_conf
from flotilla.runtime.containers.argv import (
    ContainerError,
    ContainerProcess,
    bind_paths,
    check_image,
    container_env,
    gpu_devices,
    run_argv,
    write_env_file,
)
from flotilla.runtime.containers.cgroups import ContainerCgroups, cgroup_parent
from flotilla.runtime.containers.task import TaskContainers
from flotilla.runtime.isolation import NodeIsolation, TaskCgroup
from flotilla.runtime.isolation.task import TaskIsolation
from flotilla.runtime.processes import DEFAULT_SIGNALS
from flotilla.runtime.taskspec import GitClone, Limits, SecretFile, TaskSpec


def task(tmp_path: Path, **fields: object) -> TaskSpec:
    task_dir = tmp_path / "runs" / "r1" / "0" / "rank-0"
    root = task_dir / "root"
    return TaskSpec(  # noqa: S604 - the task's shell command, not run here
        task_id="r1-0-0",
        task_dir=str(task_dir),
        workdir=str(root / "workspace"),
        env={"PATH": "/host/venv/bin", "HOME": "/root", "TOKEN": "sekrit", "LANG": "C.UTF-8"},
        shell="echo $TOKEN",
        files=[SecretFile(str(root / "creds" / "key.json"), "{}")],
        git=[GitClone("https://example.com/repo.git", str(root / "workspace" / "repo"))],
        keep=[str(tmp_path / "checkpoints" / "r1")],
        image="localhost/trainer:1",
        **fields,  # type: ignore[arg-type]
    )


def containers(spec: TaskSpec, tmp_path: Path) -> TaskContainers:
    conf = tmp_path / "containers.conf"
    write_conf(conf, "/usr/sbin/runc", None)
    runtime = ContainerRuntime(
        True, "", "/usr/bin/podman", "4.3.1", "/usr/sbin/runc", True, str(conf)
    )
    node = dataclasses.replace(NodeIsolation.disabled("unit test"), containers=runtime)
    made = TaskContainers.for_task(spec, TaskIsolation(spec, node, DEFAULT_SIGNALS), node, print)
    assert made is not None
    return made


def test_a_process_runs_in_its_image_with_the_tasks_directories(tmp_path: Path) -> None:
    limits = Limits(memory_bytes=64 << 20, cpus=1.5, pids=4096)
    spec = task(tmp_path, limits=limits)
    Path(spec.task_dir).mkdir(parents=True)
    task_containers = containers(spec, tmp_path)
    task_containers.prepare()
    argv = task_containers.process_command(0, dict(spec.env))
    root, keep = str(Path(spec.task_dir) / "root"), spec.keep[0]
    assert argv[:3] == ["/usr/bin/podman", "run", "--rm"]
    assert argv[argv.index("--name") + 1] == "flotilla-r1-0-0-0"
    assert argv[argv.index("--network") + 1] == "host"
    assert argv[argv.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"  # the agent's
    assert argv[argv.index("--workdir") + 1] == spec.workdir
    # The task's root (working dir, checkout, secret file) and the checkpoint dir,
    # each at its own path; never the task directory with the env files.
    assert {a for a in argv if a.startswith("--volume=")} == {
        f"--volume={root}:{root}",
        f"--volume={keep}:{keep}",
    }
    assert "--memory=67108864" in argv and "--memory-swap=67108864" in argv
    assert "--cpus=1.5" in argv and "--pids-limit=4096" in argv and "--init" in argv
    assert "--shm-size=67108864" in argv and "--label=flotilla.task=r1-0-0" in argv
    assert argv[argv.index("--") + 1] == "localhost/trainer:1"
    assert argv[-1] == "echo $TOKEN" and not any("sekrit" in a for a in argv)
    env_file = Path(argv[argv.index("--env-file") + 1])
    assert env_file.parent == Path(spec.task_dir)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # The host's PATH and HOME stay outside: the image's apply.
    assert env_file.read_text().splitlines() == ["TOKEN=sekrit", "LANG=C.UTF-8"]
    assert Path(keep).is_dir()
    task_containers.cleanup()
    assert not env_file.exists()


def test_containers_go_under_the_tasks_group_and_what_podman_made_is_removed(
    tmp_path: Path,
) -> None:
    """This machine's layout: the agent's memory group is deeper than its others."""
    cg = tmp_path / "cg"
    mounts = {"memory": ("/", cg / "memory"), "pids": ("/", cg / "pids"), "": ("/", cg / "u")}
    dirs = {"memory": cg / "memory/sandbox/key/t", "pids": cg / "pids/key/t", "": cg / "u/key/t"}
    for directory in dirs.values():  # the task's own groups, made by its isolation
        directory.mkdir(parents=True)
    placed = ContainerCgroups(TaskCgroup(dirs, "hybrid"), mounts)
    assert placed.parent == "/sandbox/key/t"  # memory's: the task's limit holds for all
    placed.note_existing()
    for root in ("memory", "pids", "u"):  # what podman makes: the path, conmon/ in it
        (cg / root / "sandbox/key/t/conmon").mkdir(parents=True, exist_ok=True)
    assert placed.remove(timeout=0.1) == ""
    assert sorted(str(p.relative_to(cg)) for p in cg.rglob("*")) == [
        "memory", "memory/sandbox", "memory/sandbox/key", "memory/sandbox/key/t",
        "pids", "pids/key", "pids/key/t", "u", "u/key", "u/key/t",
    ]  # fmt: skip
    v2 = {"": ("/", cg / "u")}
    assert cgroup_parent(TaskCgroup({"": cg / "u/agent/key/t"}, "v2"), v2) == "/agent/key/t"
    assert cgroup_parent(None, v2) is None


def test_a_users_container_has_no_privileges_and_its_groups() -> None:
    process = ContainerProcess(
        name="n", image="img", command=["true"], workdir="/w", env_file="/e", uid=5, gid=6,
        groups=(6, 7, 7), own_account=True,
    )  # fmt: skip
    argv = run_argv("podman", process)
    assert argv[argv.index("--user") + 1] == "5:6"
    assert [a for a in argv if a.startswith("--group-add")] == ["--group-add=7"]
    assert "--cap-drop" in argv and "no-new-privileges" in argv
    assert argv[-3:] == ["--", "img", "true"]


def test_an_image_that_could_be_an_option_is_refused() -> None:
    for bad in ("--privileged", "-v/:/host", "", "a b", "img\n"):
        with pytest.raises(ContainerError):
            check_image(bad)
    for good in ("busybox", "docker.io/library/python:3.11-slim", "localhost/x@sha256:ab12"):
        assert check_image(good) == good


def test_a_value_podman_could_not_carry_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="KEY holds a line break") as failed:
        write_env_file(tmp_path / "e.env", {"OK": "1", "KEY": "-----BEGIN\nsecret"})
    assert "secret" not in str(failed.value)


def test_bind_paths_are_first_levels_of_the_task_and_the_rest_as_they_are() -> None:
    top = "/d/runs/r/0/rank-0"
    paths = [f"{top}/root/workspace", f"{top}/root/x/y", f"{top}/home", "/elsewhere/w"]
    assert bind_paths(top, paths, ["/ckpt/r", "/ckpt/r/sub"]) == [
        "/ckpt/r",
        f"{top}/home",
        f"{top}/root",
        "/elsewhere/w",
    ]
    with pytest.raises(ContainerError, match="':' or ','"):
        bind_paths(top, ["/a:b"], [])


def test_gpus_pass_by_cdi_where_the_node_has_the_spec(tmp_path: Path) -> None:
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "nvidia.yaml").write_text("cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices: []\n")
    devices, count = gpu_devices("1,3", cdi_dirs=[cdi], dev=tmp_path / "nodev")
    assert devices == ["nvidia.com/gpu=1", "nvidia.com/gpu=3"] and count == 2
    inside = container_env({"CUDA_VISIBLE_DEVICES": "1,3"}, False, count)
    assert inside == {"CUDA_VISIBLE_DEVICES": "0,1"}  # as the container numbers them


def test_gpus_pass_as_device_nodes_without_cdi(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia3", "nvidiactl", "nvidia-uvm"):
        (dev / name).touch()
    devices, count = gpu_devices("3", cdi_dirs=[tmp_path / "nocdi"], dev=dev)
    assert devices == [str(dev / "nvidia3"), str(dev / "nvidiactl"), str(dev / "nvidia-uvm")]
    assert count == 1
    assert gpu_devices("5", cdi_dirs=[], dev=dev) == ([], 0)  # nothing to pass
    assert gpu_devices("", cdi_dirs=[], dev=dev) == ([], 0)


def test_an_accounts_home_and_name_stay_the_servers_do_not() -> None:
    env = {"HOME": "/t/home", "USER": "flo-a", "PATH": "/x", "SHELL": "/bin/bash", "A": "1"}
    assert container_env(env, True, None) == {"HOME": "/t/home", "USER": "flo-a", "A": "1"}
    assert container_env(env, False, None) == {"A": "1"}


def test_the_conf_asks_for_runc_and_limits_the_agent_can_grant(tmp_path: Path) -> None:
    conf = tmp_path / "containers.conf"
    write_conf(conf, "/usr/sbin/runc", "/usr/libexec/podman/catatonit")
    text = conf.read_text()
    assert 'runtime = "runc"' in text and 'runc = ["/usr/sbin/runc"]' in text
    assert 'cgroup_manager = "cgroupfs"' in text and 'events_logger = "file"' in text
    assert 'init_path = "/usr/libexec/podman/catatonit"' in text
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert f"nofile={hard}:{hard}" in text or hard == resource.RLIM_INFINITY
