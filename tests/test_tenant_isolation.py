"""Tenants isolated from the control plane and from each other (issue 12), end to
end through a real server and its node agent: with FLOTILLA_RUN_AS_USER on, an
ordinary user's job runs as their account, reads neither the admin token, the
secrets key nor another user's task files, writes its run's checkpoint dir, and
stays inside the memory limit its `resources` ask for. The server's secrets never
reach a task's environment, isolation or not. Afterwards no account or cgroup the
test made is left. The isolated tests skip, with the probe's reason, where this
machine cannot isolate (not root, no cgroups)."""

from __future__ import annotations

import grp
import json
import pwd
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flotilla.compute import paths
from flotilla.compute.base import LaunchRequest
from flotilla.compute.local.backend import LocalBackend
from flotilla.runtime.isolation import FULL, probe
from flotilla.runtime.isolation.cgroups import agent_key, discover
from flotilla.runtime.taskspec import Limits, TaskSpec
from flotilla.server.services.runs.launch import PIDS_PER_PROCESS
from tests.conftest import Api, make_settings, open_api
from tests.factories import (
    ADMIN_TOKEN,
    add_user,
    cleanup_data_dir,
    in_worker_share,
    job,
    remove_test_accounts,
    wait_for,
    wait_run,
)

PROBE = probe()
isolated = pytest.mark.skipif(PROBE.level != FULL, reason=f"isolation: {PROBE.summary()}")
BLOCK = 100  # numbers per test server: its own, so two tests never claim one name twice
UID_BLOCKS = 2_146_000_000  # where this group's blocks start
# The tests that make real accounts run one after another, in one pytest-xdist worker:
# their servers' accounts have the same names (`flo-alice`), in different UID blocks.
accounts_group = pytest.mark.xdist_group("unix-accounts")
pytestmark = accounts_group


@pytest.fixture
def uid_range() -> Iterator[tuple[int, int]]:
    """A block of UIDs/GIDs no account of this machine has, and no other worker of
    this test run can draw; its `flo-*` accounts are removed afterwards (by then the
    test's processes are gone)."""
    # Only this group's tests, one after another in one worker, draw from these
    # blocks: an account still there is an earlier test's, re-made after its
    # teardown by a launch its agent had in flight. It would refuse this test's
    # account of the same name (`flo-alice` with another UID).
    remove_test_accounts(UID_BLOCKS, UID_BLOCKS + BLOCK * 9_000 - 1, retry_for=10.0)
    used = {u.pw_uid for u in pwd.getpwall()} | {g.gr_gid for g in grp.getgrall()}
    while True:
        first = UID_BLOCKS + BLOCK * in_worker_share(9_000)
        if not used & set(range(first, first + BLOCK)):
            break
    yield first, first + BLOCK - 1
    remove_test_accounts(first, first + BLOCK - 1)
    left = [u.pw_name for u in pwd.getpwall() if first <= u.pw_uid < first + BLOCK]
    assert left == [] and not [g for g in grp.getgrall() if first <= g.gr_gid < first + BLOCK]


@pytest.fixture
def open_data_dir() -> Iterator[Path]:
    """A data dir whose parents anyone may pass (pytest's 0700 temporary root would
    hide it from other users by itself): only its own 0700 mode and the hiding
    keep tasks out, and the test tells which one did."""
    parent = Path(tempfile.mkdtemp(prefix="flotest-"))
    parent.chmod(0o755)
    yield parent / "data"
    cleanup_data_dir(parent / "data")
    shutil.rmtree(parent)


@pytest.fixture
async def isolating(open_data_dir: Path, uid_range: tuple[int, int]) -> AsyncIterator[Api]:
    """A server that runs tasks as their users; once it is closed, its agent, its
    tasks and their cgroups are gone."""
    data_dir = open_data_dir
    first, last = uid_range
    settings = make_settings(data_dir, run_as_user=True, uid_min=first, uid_max=last)
    async for api in open_api(settings):
        yield api
    cleanup_data_dir(data_dir)  # before the accounts go: userdel refuses a running user
    key = agent_key(str((data_dir / "agent.lock").resolve()))
    assert [b for b in discover().bases.values() if (b / key).exists()] == []


async def start(api: Api, headers: httpx.Headers, name: str, command: str, **spec: Any) -> str:
    applied = await api.client.put("/api/recipes", json=job(name, command, **spec), headers=headers)
    assert applied.status_code == 201, applied.text
    job_id = applied.json()["state"]["id"]
    started = await api.client.post(f"/api/jobs/{job_id}/start", headers=headers)
    assert started.status_code == 200, started.text
    return str(started.json()["run"]["id"])


async def logs(api: Api, run_id: str) -> str:
    return (await api.client.get(f"/api/runs/{run_id}/logs")).text


@isolated
async def test_a_users_job_reads_nothing_of_the_server_or_other_users(isolating: Api) -> None:
    api = isolating
    data_dir = api.ctx.settings.data_dir
    alice = await add_user(api.ctx, "alice")
    bob = await add_user(api.ctx, "bob")
    bobs = await start(api, bob, "bobs", "echo BOB-SECRET > BOBS-NOTES; exec sleep 60")
    await wait_run(api.client, bobs, "running")
    bobs_dir = Path(paths.task_dir(str(data_dir / "runs"), bobs, 0, 0)).parent.parent
    assert bobs_dir.is_dir()
    key = (data_dir / "secret.key").read_bytes().strip()
    assert (data_dir / "admin-token").read_text().strip() == ADMIN_TOKEN
    # Hidden even where the modes would let anyone read them (the hiding, not the
    # 0700/0600 modes, is what this test checks):
    data_dir.chmod(0o755)
    (data_dir / "admin-token").chmod(0o644)
    (data_dir / "secret.key").chmod(0o644)
    command = (
        f"id -u; cat {data_dir}/admin-token; cat {data_dir}/secret.key;"
        f" ls -R {bobs_dir}; cat {bobs_dir}/*/*/root/workspace/BOBS-NOTES;"
        " ls /proc/$PPID/root/ >/dev/null && echo proc-root-readable;"
        " echo ok > $FLOTILLA_CHECKPOINT_DIR/x && cat $FLOTILLA_CHECKPOINT_DIR/x"
    )
    mine = await start(api, alice, "attack", command)
    run = await wait_run(api.client, mine, "succeeded", "failed")
    text = await logs(api, mine)
    lines = text.splitlines()
    users = {u["username"]: u["uid"] for u in (await api.client.get("/api/users")).json()["users"]}
    assert lines[0] == str(users["alice"]), text
    assert ADMIN_TOKEN not in text and key.decode(errors="replace") not in text
    assert "BOB-SECRET" not in text and "rank-0" not in text  # neither read nor listed
    assert f"{data_dir}/admin-token: No such file or directory" in text
    assert f"{data_dir}/secret.key: No such file or directory" in text
    assert f"{bobs_dir}': No such file or directory" in text
    assert "proc-root-readable" not in text  # the supervisor's root is root's
    assert lines[-1] == "ok" and run["status"] == "succeeded", text
    checkpoint = api.ctx.settings.checkpoints / mine
    assert (checkpoint / "x").stat().st_uid == users["alice"]
    assert checkpoint.stat().st_uid == users["alice"] and checkpoint.stat().st_mode & 0o777 == 0o700
    # Bob's task is still running: the fixture's cleanup kills it and its cgroup.


@isolated
async def test_a_job_past_its_memory_is_killed(isolating: Api) -> None:
    api = isolating
    alice = await add_user(api.ctx, "alice")
    hog = "/usr/bin/python3 -c 'a = bytearray(512 << 20); print(\"survived\")'"
    run_id = await start(api, alice, "hog", hog, resources={"memory": "64Mi"})
    run = await wait_run(api.client, run_id, "succeeded", "failed")
    assert run["status"] == "failed" and run["exit_code"] == 137, run
    assert "survived" not in await logs(api, run_id)


SERVER_SECRETS = {
    "FLOTILLA_ADMIN_TOKEN": "flo_env-admin-token-XYZ",
    "FLOTILLA_SECRET_KEY": "env-secret-key-XYZ",
    "FLOTILLA_DATABASE_URL": "postgresql://flotilla:db-password-XYZ@127.0.0.1/flotilla",
    "FLOTILLA_OIDC_CLIENT_SECRET": "oidc-secret-XYZ",
}


async def test_the_servers_secrets_never_reach_a_task(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Isolation off (tasks run as the server's user): the task's environment and
    the agent's (its parent supervisor's) hold none of the server's secrets."""
    for name, value in SERVER_SECRETS.items():
        monkeypatch.setenv(name, value)  # before the server starts its agent
    async for api in open_api(make_settings(data_dir, run_as_user=False)):
        command = "env; echo; tr '\\0' '\\n' < /proc/$PPID/environ"
        run_id = await start(api, httpx.Headers(), "env", command)
        run = await wait_run(api.client, run_id, "succeeded", "failed")
        text = await logs(api, run_id)
        assert run["status"] == "succeeded" and "PATH=" in text, text
        assert [v for v in SERVER_SECRETS.values() if v in text] == []
        assert "XYZ" not in text and ADMIN_TOKEN not in text


class RecordingBackend(LocalBackend):
    """The TaskSpec of each launch, as the agent would receive it, kept instead of
    launched (so this part runs without root)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, None, 60.0)
        self.sent: list[TaskSpec] = []

    async def launch(self, request: LaunchRequest) -> None:
        self.sent.append(
            TaskSpec.from_dict(json.loads(json.dumps(self.task_spec(request).to_dict())))
        )


@pytest.mark.parametrize("run_as_user", [True, False])
async def test_a_confined_launch_says_what_to_hide_and_limit(
    data_dir: Path, tmp_path: Path, run_as_user: bool
) -> None:
    backend = RecordingBackend(data_dir)
    db = tmp_path / "db" / "flotilla.db"
    db.parent.mkdir()
    settings = make_settings(
        data_dir,
        f"sqlite+aiosqlite:///{db}",
        run_as_user=run_as_user,
        checkpoint_dir=tmp_path / "ckpt",
    )
    async for api in open_api(settings, backend=backend):
        resources = {"memory": "1Gi", "cpu": 1.5}
        run_id = await start(api, httpx.Headers(), "big", "true", nprocs=2, resources=resources)

        async def sent(run_id: str = run_id) -> TaskSpec | None:
            return next((s for s in backend.sent if run_id in s.task_dir), None)

        spec: TaskSpec = await wait_for(sent, what="the launch")
    if not run_as_user:  # as before: the server's user, no cgroup, nothing hidden
        assert (spec.run_as, spec.limits, spec.hide, spec.keep) == (None, None, [], [])
        return
    # A CPU task: it may open none of the node's GPUs.
    limits = Limits(memory_bytes=1 << 30, cpus=1.5, pids=2 * PIDS_PER_PROCESS, gpus=[])
    assert spec.limits == limits
    assert spec.hide == [str(data_dir), str(tmp_path / "ckpt"), str(db.parent)]
    assert spec.keep == [str(tmp_path / "ckpt" / run_id)]
    assert spec.env["FLOTILLA_CHECKPOINT_DIR"] == spec.keep[0]
