"""Container images (issue 12, point 5): a job's `image` runs where the node has
rootful podman with runc, through a real server, its agent and its supervisors, in
a small image built here (static busybox, imported: no registry is reachable). The
job sees its working dir and checkpoint dir and nothing else of the host, runs as
its user, is OOM-killed past its memory, and a stop leaves no container; its
environment never shows on a command line. A node without podman runs the job on
the host and says so. The podman tests skip (with the reason) when not root or
podman is missing, except under CI, which installs podman: there they fail.

What a test makes is removed: the image, the private image storage (every podman
call here and every test agent uses it, through CONTAINERS_STORAGE_CONF), the
podman state directories that did not exist before, the accounts, and every cgroup
directory podman made for a test agent."""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flotilla.compute.local.backend import LocalBackend
from flotilla.recipes.job import JobSpec
from flotilla.runtime.agent_client import AgentClient
from flotilla.runtime.containers import find_runc, unavailable_reason, write_conf
from flotilla.runtime.isolation.cgroups import agent_key, cgroup_mounts, discover
from flotilla.runtime.taskspec import TaskState
from flotilla.server.services.runs.launch import workload_of
from tests.conftest import Api, make_settings, open_api
from tests.factories import (
    add_user,
    cleanup_data_dir,
    in_worker_share,
    job,
    remove_test_accounts,
    wait_for,
    wait_run,
)

# One worker for all of them: each checks at teardown that podman left no cgroup
# directory behind, which a container of a test in another worker would be.
pytestmark = pytest.mark.xdist_group("podman")

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static
APPLETS = ("sh", "id", "cat", "ls", "sleep", "echo", "dd", "tr", "pwd", "true", "touch", "env")
# Made by podman on first use; removed afterwards if this test run made them. Every
# pytest-xdist worker has its own image storage, but these are the node's: the
# sessions count themselves in STATE_LOCK, and the last one out removes them.
PODMAN_STATE = (Path("/run/libpod"), Path("/var/lib/containers"), Path("/run/runc"))
STATE_LOCK = Path("/tmp/flotest-podman-state.json")
BLOCK = 100
# Accounts are named after users (flo-NAME): one name per worker, never reused with
# another number while another worker's server still has it.
USER = f"ctr{uuid.uuid4().hex[:10]}"


def podman_missing() -> str | None:
    if os.geteuid() != 0:
        return "containers: not root (only rootful podman is used)"
    if not BUSYBOX.exists() or b"ld-linux" in BUSYBOX.read_bytes()[:4096]:  # its PT_INTERP
        return "no static /bin/busybox for the test image (apt-get install busybox-static)"
    return unavailable_reason()


def need_podman() -> None:
    reason = podman_missing()
    if reason is None:
        return
    if os.environ.get("CI") and os.geteuid() == 0:
        pytest.fail(f"CI installs podman, runc and busybox-static: {reason}")
    pytest.skip(reason)


class Podman:
    """podman on the test's private storage, configured as the agent configures it."""

    def __init__(self, root: Path) -> None:
        self.storage = root / "storage.conf"
        self.storage.write_text(
            f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n'
        )
        self.conf = root / "containers.conf"
        runc = find_runc()
        assert runc is not None
        write_conf(self.conf, runc, None)

    def __call__(self, *args: str, stdin: bytes | None = None) -> str:
        env = {**os.environ, "CONTAINERS_CONF": str(self.conf)}
        done = subprocess.run(
            ["podman", *args], env=env, input=stdin, capture_output=True, timeout=120
        )
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def containers(self, prefix: str = "flotilla-") -> list[str]:
        names = self("ps", "--all", "--format", "{{.Names}}").split()
        return [n for n in names if n.startswith(prefix)]


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    need_podman()
    root = Path(tempfile.mkdtemp(prefix="flotest-podman-"))  # not under pytest's 0700 root
    with _podman_state_counted(), pytest.MonkeyPatch.context() as patch:
        tool = Podman(root)
        patch.setenv("CONTAINERS_STORAGE_CONF", str(tool.storage))  # test agents inherit it
        yield tool
        tool("rm", "--all", "--force", "--time", "0")
        tool("rmi", "--all", "--force")
    shutil.rmtree(root)


@contextlib.contextmanager
def _podman_state_counted() -> Iterator[None]:
    def change(by: int) -> None:
        with open(STATE_LOCK, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            state = json.loads(f.read() or '{"sessions": 0, "made": []}')
            if state["sessions"] == 0:  # the first session in: what is not there yet
                state["made"] = [str(p) for p in PODMAN_STATE if not p.exists()]
            state["sessions"] += by
            if state["sessions"] > 0:
                f.seek(0)
                f.truncate()
                f.write(json.dumps(state))
                return
            for made in state["made"]:
                shutil.rmtree(made, ignore_errors=True)
            STATE_LOCK.unlink()

    change(+1)
    try:
        yield
    finally:
        change(-1)


@pytest.fixture(scope="session")
def image(podman: Podman) -> str:
    """localhost/flotilla-test-HEX: static busybox and its applets, nothing else
    (no /etc/os-release, no bash)."""
    name = f"localhost/flotilla-test-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="flotest-image-") as scratch:
        tree = Path(scratch) / "tree"
        (tree / "bin").mkdir(parents=True)
        (tree / "tmp").mkdir(mode=0o1777)
        shutil.copy2(BUSYBOX, tree / "bin" / "busybox")
        for applet in APPLETS:
            (tree / "bin" / applet).symlink_to("busybox")
        archive = Path(scratch) / "image.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(tree, arcname=".")
        podman("import", "-", name, stdin=archive.read_bytes())
    return name


@pytest.fixture
def uid_block() -> Iterator[tuple[int, int]]:
    used = {u.pw_uid for u in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    while True:
        first = 2_145_000_000 + BLOCK * in_worker_share(9_000)
        if not used & set(range(first, first + BLOCK)):
            break
    yield first, first + BLOCK - 1
    remove_test_accounts(first, first + BLOCK - 1)


@pytest.fixture
def open_data_dir() -> Iterator[Path]:
    """A data dir whose parents anyone may pass (as test_tenant_isolation's)."""
    parent = Path(tempfile.mkdtemp(prefix="flotest-"))
    parent.chmod(0o755)
    yield parent / "data"
    cleanup_data_dir(parent / "data")
    shutil.rmtree(parent)


@pytest.fixture
async def server(
    podman: Podman, image: str, open_data_dir: Path, uid_block: tuple[int, int]
) -> AsyncIterator[Api]:
    """A server that runs tasks as their users; afterwards no container, no cgroup
    directory podman made for its agent, no libpod_parent."""
    data_dir = open_data_dir
    existed = set(_ways_to_the_memory_group())
    settings = make_settings(data_dir, run_as_user=True, uid_min=uid_block[0], uid_max=uid_block[1])
    async for api in open_api(settings):
        yield api
    left = podman.containers()
    podman("rm", "--all", "--force", "--time", "0")
    cleanup_data_dir(data_dir)
    key = agent_key(str((data_dir / "agent.lock").resolve()))
    mountpoints = {m for _, m in cgroup_mounts().values()}
    ours = [p for m in mountpoints for p in m.rglob(key)]
    libpod = [m / "libpod_parent" for m in mountpoints if (m / "libpod_parent").exists()]
    # The way to the agent's memory group that podman made in the other hierarchies
    # is gone too, unless another test's agent still has groups below it.
    made = [d for d in _ways_to_the_memory_group() if d not in existed]
    empty = [d for d in made if not any(c.is_dir() for c in d.iterdir())]
    for leftover in [*ours, *sorted(made, key=lambda d: -len(d.parts))]:  # a failed test's
        for directory in sorted(leftover.rglob("*/"), key=lambda d: -len(d.parts)):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            leftover.rmdir()
    assert (left, ours, libpod, empty) == ([], [], [], [])


def _ways_to_the_memory_group() -> Iterator[Path]:
    """This process's memory group's path (the containers' cgroup parent's top) as
    it exists in the other hierarchies."""
    mounts = cgroup_mounts()
    base = discover().bases.get("memory")
    if base is None or "memory" not in mounts:
        return
    relative = base.relative_to(mounts["memory"][1])
    for mountpoint in {m for _, m in mounts.values()} - {mounts["memory"][1]}:
        for depth in range(1, len(relative.parts) + 1):
            if (way := mountpoint.joinpath(*relative.parts[:depth])).is_dir():
                yield way


async def start(api: Api, headers: httpx.Headers, name: str, command: str, **spec: Any) -> str:
    applied = await api.client.put("/api/recipes", json=job(name, command, **spec), headers=headers)
    assert applied.status_code == 201, applied.text
    started = await api.client.post(
        f"/api/jobs/{applied.json()['state']['id']}/start", headers=headers
    )
    assert started.status_code == 200, started.text
    return str(started.json()["run"]["id"])


async def logs(api: Api, run_id: str) -> str:
    return (await api.client.get(f"/api/runs/{run_id}/logs")).text


async def events(api: Api, run_id: str) -> list[str]:
    found = (await api.client.get(f"/api/runs/{run_id}/events")).json()["events"]
    return [str(e["message"]) for e in found]


async def uid_of(api: Api, name: str) -> int:
    users = (await api.client.get("/api/users")).json()["users"]
    return int(next(u["uid"] for u in users if u["username"] == name))


async def test_a_job_runs_in_its_image_as_its_user_with_its_directories(
    server: Api, image: str
) -> None:
    api = server
    data_dir = api.ctx.settings.data_dir
    me = await add_user(api.ctx, USER)
    command = (
        "id -u; cat /etc/os-release || echo no-os-release; ls /bin/bash || echo no-bash;"
        f" pwd; cat {data_dir}/admin-token || echo no-admin-token; echo made > made.txt;"
        " echo ok > $FLOTILLA_CHECKPOINT_DIR/x && cat $FLOTILLA_CHECKPOINT_DIR/x"
    )
    setup = "echo set up in $(ls /bin/bash 2>/dev/null || echo busybox) > setup.txt"
    run_id = await start(api, me, "inimage", command, image=image, start_script=setup)
    run = await wait_run(api.client, run_id, "succeeded", "failed")
    text = await logs(api, run_id)
    lines = text.splitlines()
    uid = await uid_of(api, USER)
    assert run["status"] == "succeeded", text
    assert lines[0] == str(uid) and "no-os-release" in lines and "no-bash" in lines, text
    assert "no-admin-token" in lines and lines[-1] == "ok", text
    workdir = Path(lines[lines.index("no-bash") + 1])  # the task's own, bound at its path
    assert workdir.is_relative_to(data_dir / "runs")
    assert (workdir / "made.txt").read_text() == "made\n"
    assert (workdir / "made.txt").stat().st_uid == uid
    assert (workdir / "setup.txt").read_text() == "set up in busybox\n"  # in the image too
    checkpoint = api.ctx.settings.checkpoints / run_id / "x"
    assert checkpoint.read_text() == "ok\n" and checkpoint.stat().st_uid == uid
    assert any(f"runs in image {image} (podman)" in e for e in await events(api, run_id))


async def test_each_process_of_a_task_has_its_container(server: Api, image: str) -> None:
    api = server
    me = await add_user(api.ctx, USER)
    command = "echo local-$LOCAL_RANK of $WORLD_SIZE"
    run_id = await start(api, me, "two", command, image=image, nprocs=2)
    run = await wait_run(api.client, run_id, "succeeded", "failed")
    text = await logs(api, run_id)
    assert run["status"] == "succeeded", text
    assert sorted(text.splitlines()) == ["local-0 of 2", "local-1 of 2"], text


async def test_a_job_past_its_memory_in_a_container_is_killed(server: Api, image: str) -> None:
    api = server
    me = await add_user(api.ctx, USER)
    hog = "exec dd if=/dev/zero of=/dev/null bs=256M count=1"
    run_id = await start(api, me, "hog", hog, image=image, resources={"memory": "64Mi"})
    run = await wait_run(api.client, run_id, "succeeded", "failed")
    assert run["status"] == "failed" and run["exit_code"] == 137, (run, await logs(api, run_id))


async def test_a_stop_removes_the_container_and_no_secret_is_on_a_command_line(
    server: Api, image: str, podman: Podman
) -> None:
    api = server
    me = await add_user(api.ctx, USER)
    secret = f"sekrit-{uuid.uuid4().hex}"
    # The shell ignores the stop's SIGTERM: only the kill at the end of the grace
    # period (2 s here) ends it, and SIGKILL cannot be passed through podman.
    command = "trap '' TERM; echo started $(echo $TOKEN | tr a-z A-Z); sleep 120"
    env = {"TOKEN": secret}
    run_id = await start(api, me, "stopme", command, image=image, environment_variables=env)

    async def started() -> bool:
        return secret.upper() in await logs(api, run_id)

    await wait_for(started, timeout=30, what="the container to start")
    assert len(podman.containers()) == 1
    assert [pid for pid, line in _cmdlines() if secret in line] == []
    job_id = (await api.client.get(f"/api/runs/{run_id}")).json()["job_id"]
    began = time.monotonic()
    assert (await api.client.post(f"/api/jobs/{job_id}/stop")).status_code == 200
    await wait_run(api.client, run_id, "stopped", timeout=30)
    assert time.monotonic() - began < 15
    assert podman.containers() == []


def _cmdlines() -> Iterator[tuple[int, str]]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue


async def test_the_agent_says_which_runtime_it_has(podman: Podman, data_dir: Path) -> None:
    async def ignore(_state: TaskState) -> None:
        return None

    client = AgentClient(data_dir, ignore, idle_exit=60.0)
    try:
        hello = await client.request("hello")
    finally:
        await client.close()
    assert re.fullmatch(r"podman \d+\.\d+\.\d+ \(runc\)", hello["containers"]), hello
    conf = (data_dir / "containers.conf").read_text()
    assert 'runtime = "runc"' in conf and 'cgroup_manager = "cgroupfs"' in conf


@pytest.fixture
def no_podman_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH with what the job needs and no podman (nor docker) on it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("cat", "echo", "id"):
        found = shutil.which(program)
        assert found is not None
        (bin_dir / program).symlink_to(found)
    monkeypatch.setenv("PATH", str(bin_dir))  # before the server starts its agent


async def test_without_a_runtime_the_job_runs_on_the_host_and_says_so(
    no_podman_path: None, data_dir: Path
) -> None:
    async for api in open_api(make_settings(data_dir)):
        command = "cat /etc/os-release > /dev/null && echo on-the-host"
        run_id = await start(api, httpx.Headers(), "nopodman", command, image="busybox:1")
        run = await wait_run(api.client, run_id, "succeeded", "failed")
        assert run["status"] == "succeeded" and "on-the-host" in await logs(api, run_id)
        notes = [e for e in await events(api, run_id) if "image busybox:1" in e]
        assert len(notes) == 1 and "runs as host processes" in notes[0], notes
        assert "is not used: no container runtime (" in notes[0]
    supervisor_logs = list((data_dir / "runs").rglob("supervisor.log"))
    assert any("image busybox:1 not used" in p.read_text() for p in supervisor_logs)


def test_the_note_names_the_image_where_podman_is_there(data_dir: Path) -> None:
    need_podman()
    spec = JobSpec(name="x", command="true", image="localhost/x:1")
    note = LocalBackend(data_dir, None).host_note(workload_of(spec))
    assert note is not None and note.startswith("local backend: runs in image localhost/x:1")
    assert "not used" not in note
