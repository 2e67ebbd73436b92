"""Test helpers in one place: recipe builders, waiting on conditions, git repos,
and cleaning up the processes a test's server left behind."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from flotilla.runtime.procs import is_same_process, stat_fields
from flotilla.server.context import ServerContext
from flotilla.server.db.models import (
    GroupMemberModel,
    GroupModel,
    ProjectMemberModel,
    ProjectModel,
    UserModel,
)
from flotilla.server.security import new_token, token_row

# A Python that any task's Unix account may run, for task commands that need only
# the standard library: the test's own is in a virtualenv under /root (0700), out
# of an isolated task's reach as it would be of any real user's.
TASK_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
ADMIN_TOKEN = "flo_test-admin-token"
AUTH = {"Authorization": f"token {ADMIN_TOKEN}"}


def job(
    name: str = "hello", command: str | list[str] = "echo hello", **spec: Any
) -> dict[str, Any]:
    return {
        "schema_version": "2025.10.01",
        "type": "job",
        "spec": {"name": name, "command": command, **spec},
    }


async def process_gone(pid: int) -> bool:
    """Whether no process has this pid any more (for `wait_for`)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def wait_for(
    check: Callable[[], Awaitable[Any]],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


async def apply_and_start(client: httpx.AsyncClient, recipe: dict[str, Any]) -> tuple[str, str]:
    """Apply a recipe and start it; returns (job id, run id)."""
    applied = await client.put("/api/recipes", json=recipe)
    assert applied.status_code == 201, applied.text
    job_id = applied.json()["state"]["id"]
    started = await client.post(f"/api/jobs/{job_id}/start")
    assert started.status_code == 200, started.text
    return job_id, started.json()["run"]["id"]


def apply_sync(api: httpx.Client, kind: str, spec: dict[str, Any]) -> None:
    """Apply a recipe of `kind` through a real server's API (`ServerProcess.client`)."""
    answer = api.put("/api/recipes", json={"type": kind, "spec": spec})
    assert answer.status_code in (200, 201), answer.text


def start_sync(api: httpx.Client, job: str) -> str:
    """Start a run of `job`; its id."""
    job_id = api.get(f"/api/recipes/job/{job}").json()["state"]["id"]
    answer = api.post(f"/api/jobs/{job_id}/start")
    assert answer.status_code == 200, answer.text
    return str(answer.json()["run"]["id"])


async def get_run(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/runs/{run_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def wait_run(
    client: httpx.AsyncClient, run_id: str, *statuses: str, timeout: float = 30.0
) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def check() -> dict[str, Any] | None:
        seen.update(await get_run(client, run_id))
        return seen if seen["status"] in statuses else None

    try:
        result: dict[str, Any] = await wait_for(check, timeout, what=f"run {run_id}")
    except AssertionError:
        # What it was doing instead, so that a failure on a loaded CI machine says why.
        tasks = [(t["rank"], t["status"], t["node"], t["message"]) for t in seen.get("tasks", [])]
        raise AssertionError(
            f"timed out waiting for run {run_id} to be {statuses}: it is {seen.get('status')!r}"
            f" ({seen.get('reason')!r}); tasks {tasks}"
        ) from None
    return result


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout


def make_repo(path: Path) -> Path:
    """A real git repository with two commits: tag v1 has VERSION=1, main has VERSION=2."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    (path / "VERSION").write_text("1\n")
    git(path, "add", "VERSION")
    git(path, "commit", "-qm", "one")
    git(path, "tag", "v1")
    (path / "VERSION").write_text("2\n")
    git(path, "commit", "-qam", "two")
    return path


async def tasks_uid(client: httpx.AsyncClient) -> int:
    """The UID the caller's tasks run as on the node `local`: their account's where
    it isolates, else the server's (this process's, for a server in it)."""
    node = (await client.get("/api/nodes/local")).json()
    if node["labels"].get("isolation") != "full":
        return os.geteuid()
    return int((await client.get("/api/user")).json()["uid"])


def chown_tree(path: Path, uid: int) -> None:
    """`path` and everything under it owned by `uid` (its group left as it is)."""
    os.chown(path, uid, -1)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(Path(root) / name, uid, -1, follow_symlinks=False)


def cleanup_data_dir(data_dir: Path) -> None:
    """Kill what a test's server started there: task process groups, supervisors,
    then the agent. Only pids recorded under this data directory, and only while
    they still are those processes: pids come round again within minutes (pid_max
    32768, tests in parallel), so a recorded one that died may be another test's."""
    runs = data_dir / "runs"
    if runs.exists():
        for record in runs.rglob("started.json"):
            with contextlib.suppress(Exception):
                started = json.loads(record.read_text())
                leader = int(started["pid"])
                if _is_task_group(leader, float(started["started_at"])):
                    os.killpg(leader, signal.SIGKILL)
        for record in runs.rglob("supervisor.json"):
            with contextlib.suppress(Exception):
                supervisor = json.loads(record.read_text())
                if is_same_process(int(supervisor["pid"]), supervisor.get("start_ticks")):
                    os.kill(int(supervisor["pid"]), signal.SIGKILL)
    lock = data_dir / "agent.lock"
    with contextlib.suppress(Exception):
        agent = int(lock.read_text().strip())
        if _runs_with_lock(agent, lock):
            os.kill(agent, signal.SIGKILL)
    if os.geteuid() == 0:
        remove_task_cgroups(lock)


def _is_task_group(leader: int, started_at: float) -> bool:
    """Whether the process group `leader` is still the task's that started then.
    A leader that is gone (or a zombie) leaves its number to its group while any
    member lives, so a new process cannot have it; a live one must have started
    within seconds of the task, not a pid wrap-around later."""
    fields = stat_fields(leader)
    if fields is None or fields[0] == "Z":
        return True
    boot = next(
        float(line.split()[1])
        for line in Path("/proc/stat").read_text().splitlines()
        if line.startswith("btime ")
    )
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return abs(started - started_at) < 5.0


def _runs_with_lock(pid: int, lock: Path) -> bool:
    """Whether `pid` is an agent started with this lock file (or a supervisor it
    forked, which carries the same command line)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return str(lock) in argv or str(lock.resolve()) in argv


def remove_task_cgroups(lock: Path) -> None:
    """Kill and remove the task cgroups of the agent whose lock file is `lock` (a
    supervisor killed above never ran its own cleanup), then the agent's group."""
    from flotilla.runtime.isolation.cgroups import TaskCgroup, agent_key, cgroup_mounts, discover

    layout = discover()
    key = agent_key(str(lock.resolve()))
    tasks = {
        d.name
        for base in layout.bases.values()
        if (base / key).is_dir()
        for d in (base / key).iterdir()
        if d.is_dir()
    }
    for name in tasks:
        TaskCgroup.for_task(layout, key, name).remove()
    for base in layout.bases.values():
        with contextlib.suppress(OSError):
            (base / key).rmdir()
    # Podman makes a container's cgroup parent (the agent's memory group's path) in
    # every hierarchy, where this process's own group may be elsewhere: empty
    # directories of this agent's key, wherever they are.
    for _, mountpoint in cgroup_mounts().values():
        for found in sorted(mountpoint.rglob(key), key=lambda d: -len(d.parts)):
            for directory in sorted(found.rglob("*/"), key=lambda d: -len(d.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                found.rmdir()


def unused_uid_block(base: int, size: int) -> tuple[int, int]:
    """`size` UIDs/GIDs from `base` on that no account of this machine has, in this
    pytest-xdist worker's share (no other worker draws them)."""
    import grp
    import pwd

    used = {u.pw_uid for u in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    while True:
        first = base + size * in_worker_share(9_000)
        if not used & set(range(first, first + size)):
            return first, first + size - 1


def remove_test_accounts(first: int, last: int, retry_for: float = 0.0) -> None:
    """Remove the `flo-*` accounts and groups that a test server made on this node
    (`runtime/isolation/accounts.py`), only those numbered in its range
    first..last: never an account of this machine's or of another test.
    `retry_for`: seconds to retry a user whose killed processes are not gone yet
    (userdel refuses a user with processes)."""
    import grp
    import pwd

    for user in pwd.getpwall():
        if user.pw_name.startswith("flo-") and first <= user.pw_uid <= last:
            _shadow_tool(["userdel", "--", user.pw_name], retry_for)
    # Each group's gid is looked up again just before: every test server names its
    # accounts alike (`flo-admin`), and `userdel` above may have removed the group
    # already, its name since taken by another worker's server (a gid in that
    # worker's range): `groupdel NAME` would delete that one.
    names = [g.gr_name for g in grp.getgrall() if g.gr_name.startswith("flo-")]
    for name in names:
        if first <= _gid_named(name, -1) <= last:
            _shadow_tool(["groupdel", "--", name], retry_for)


def _gid_named(name: str, missing: int) -> int:
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return missing


def _shadow_tool(argv: list[str], retry_for: float) -> None:
    """Run userdel/groupdel, retried for `retry_for` seconds (a user whose killed
    processes are not gone yet) and for at least 2 s while /etc/passwd or
    /etc/group is locked (a supervisor's useradd: exit 1 or 10)."""
    start = time.monotonic()
    while True:
        done = subprocess.run(argv, capture_output=True, check=False)
        if done.returncode == 0:
            return
        limit = max(retry_for, 2.0) if done.returncode in (1, 10) else retry_for
        if time.monotonic() - start > limit:
            raise AssertionError(f"{argv}: {done.stderr.decode(errors='replace')}")
        time.sleep(0.05)


def xdist_worker() -> tuple[int, int]:
    """(this process's number, how many there are) among pytest-xdist's workers;
    (0, 1) when the suite runs in one process. Tests that pick a number meant to be
    unique on this machine (a UID, a port) pick it from their worker's own share."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    index = int(name.removeprefix("gw")) if name.startswith("gw") else 0
    return index, max(count, index + 1)


def in_worker_share(count: int) -> int:
    """A random number in range(count) that no other worker of this test run can
    draw: every n-th one (n workers), from this worker's own offset."""
    index, workers = xdist_worker()
    if count < workers:
        raise ValueError(f"{count} numbers cannot be shared by {workers} workers")
    return index + workers * random.randrange((count - index + workers - 1) // workers)


# Ports that no one is handed by the kernel (below the ephemeral range, which both
# `bind(("", 0))` and outgoing connections draw from), so a port picked here is not
# taken between the pick and the server's bind, however many tests run at once.
_PORTS_FROM = 20000
_picked_ports: set[int] = set()


def free_port() -> int:
    """A loopback TCP port that is free now and that no other test of this run picks:
    from this worker's share of the ports below the ephemeral range, never the same
    one twice in a process (a server may not have bound its port yet)."""
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200 if low - _PORTS_FROM >= 1000 else 0):
        port = _PORTS_FROM + in_worker_share(low - _PORTS_FROM)
        if port in _picked_ports:
            continue
        _picked_ports.add(port)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue  # some other program's, on this machine
            return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's pick
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A real `flo server` on a loopback port, in its own process."""

    def __init__(self, data_dir: Path, database_url: str | None = None, **env: str) -> None:
        self.data_dir = data_dir
        self._clients: list[httpx.Client] = []
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "FLOTILLA_DATA_DIR": str(data_dir),
            "FLOTILLA_ADMIN_TOKEN": ADMIN_TOKEN,
            "FLOTILLA_PORT": str(self.port),
            "FLOTILLA_STOP_GRACE": "2",
            "FLOTILLA_SSH_PORT": "0",  # servers run side by side: any free port
            **env,
        }
        if database_url:
            self.env["FLOTILLA_DATABASE_URL"] = database_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(["flo", "server"], env=self.env, stdout=log, stderr=log)
        log.close()
        # Generous: a CI machine running three workers on two cores can take half a
        # minute just to import the server; a server that exits fails at once anyway.
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    "server exited:\n" + (self.data_dir / "server.log").read_text()
                )
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(
            "server did not come up:\n" + (self.data_dir / "server.log").read_text()
        )

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        for client in self._clients:  # what a test did not close itself
            client.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self) -> httpx.Client:
        """An admin client; closed by `stop` if the test does not close it."""
        client = httpx.Client(base_url=self.url, headers=AUTH, timeout=30)
        self._clients.append(client)
        return client


def wait_sync(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; last value: {last!r}")


async def add_user(
    ctx: ServerContext,
    name: str,
    *,
    admin: bool = False,
    groups: Sequence[str] = (),
    projects: Mapping[str, str] | None = None,
    scopes: Sequence[str] = ("read", "write"),
) -> httpx.Headers:
    """A user made straight in the store, with an API token; returns the headers that
    authenticate as them. `groups` and `projects` (name -> role) are created as needed
    so tests can set up who-sees-what without going through the API under test."""
    now = ctx.clock.now()
    token = new_token()
    async with ctx.transaction() as session:
        user = UserModel(id=uuid.uuid4().hex, name=name, is_admin=admin, created_at=now)
        session.add(user)
        await session.flush()  # rows below refer to it (no ORM relationships to order them)
        for group_name in groups:
            group = (
                await session.execute(select(GroupModel).where(GroupModel.name == group_name))
            ).scalar()
            if group is None:
                group = GroupModel(id=uuid.uuid4().hex, name=group_name, created_at=now)
                session.add(group)
                await session.flush()
            session.add(GroupMemberModel(group_id=group.id, user_id=user.id))
        for project_name, role in (projects or {}).items():
            project = (
                await session.execute(select(ProjectModel).where(ProjectModel.name == project_name))
            ).scalar()
            if project is None:
                project = ProjectModel(id=uuid.uuid4().hex, name=project_name, created_at=now)
                session.add(project)
                await session.flush()
            session.add(
                ProjectMemberModel(
                    project_id=project.id, principal_kind="user", principal_id=user.id, role=role
                )
            )
        session.add(token_row(user.id, "test", token, scopes, now))
    return httpx.Headers({"Authorization": f"token {token}"})


def ssh_public_key(comment: str = "me@laptop", rsa_bits: int | None = None) -> str:
    """A fresh OpenSSH public key line: ed25519, or RSA of `rsa_bits`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
        if rsa_bits
        else ed25519.Ed25519PrivateKey.generate()
    )
    line = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    return f"{line} {comment}" if comment else line


# Helpers for metering, cost and budget tests (tests/test_metering*.py, test_budgets*.py).
from datetime import datetime  # noqa: E402

from flotilla.server.db.models import RecipeModel, UsageModel  # noqa: E402


async def add_usage(
    ctx: ServerContext,
    *,
    user: str,
    started_at: datetime,
    ended_at: datetime | None,
    owner: str | None = None,
    owner_kind: str = "user",
    project: str | None = None,
    instance_type: str = "h100-80gb-sxm-ib.8x",
    gpus: int = 8,
    share: float = 1.0,
    price_per_hour: float = 31.2,
    spot: bool = False,
    run_id: str | None = None,
) -> str:
    """A usage row made straight in the store, as the metering reconciler would
    write it (for reports and budgets without running anything). Its task does not
    exist, so metering closes it at once if it is left open. Returns its run id."""
    run_id = run_id or uuid.uuid4().hex
    async with ctx.transaction() as session:
        session.add(
            UsageModel(
                task_id=f"{run_id}-0-{uuid.uuid4().hex[:6]}",
                run_id=run_id,
                recipe_type="job",
                recipe_name="made-up",
                user=user,
                owner=owner or user,
                owner_kind=owner_kind,
                project=project,
                node="made-up-node",
                instance_type=instance_type,
                gpu_type="H100",
                gpus=gpus,
                spot=spot,
                share=share,
                price_per_hour=price_per_hour,
                started_at=started_at,
                ended_at=ended_at,
            )
        )
    return run_id


def fleet_row(name: str, at: datetime) -> RecipeModel:
    """A fleet recipe's row, owned by the admin, with no spec: what idle-time
    metering bills a fleet's nodes to (its nodes are made by the test)."""
    return RecipeModel(
        id=uuid.uuid4().hex, type="fleet", name=name, owner="admin", project=None,
        schema_version="2025.10.01", spec={}, created_at=at, updated_at=at,
    )  # fmt: skip


async def add_password_user(
    ctx: ServerContext,
    name: str,
    password: str,
    *,
    admin: bool = False,
    locked: bool = False,
    service_account: bool = False,
) -> httpx.Headers:
    """`add_user`, plus a password (argon2id) so that `name` can log in at
    `POST /api/auth/login`; returns their API token headers all the same."""
    from flotilla.server.auth.passwords import hash_password

    headers = await add_user(ctx, name, admin=admin)
    async with ctx.transaction() as session:
        user = (await session.execute(select(UserModel).where(UserModel.name == name))).scalar_one()
        user.password_hash = hash_password(password)
        user.locked = locked
        user.is_service_account = service_account
    return headers
