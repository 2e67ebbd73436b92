"""SSH sessions into isolated tasks (issue 12): with FLOTILLA_RUN_AS_USER on, a
shell, a command or SFTP runs as the task's user, in its mount namespace (the data
dir hidden) and in its cgroup, with OpenSSH's real client, with a terminal (-tt)
and without. A task whose process is gone from its cgroup or namespace gets no
session, never a root one. Sessions into tasks without isolation keep running as
the server's user (tests/test_ssh.py). Skips, with the probe's reason, where this
machine cannot isolate."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from flotilla.runtime.sessions.entry import CannotEnter, TaskEntry, task_entry
from flotilla.runtime.sessions.shell import sftp_server
from tests.conftest import Api, make_settings, open_api
from tests.factories import cleanup_data_dir, job, wait_run
from tests.test_ssh import person
from tests.test_tenant_isolation import accounts_group, isolated, open_data_dir, uid_range

__all__ = ["open_data_dir", "uid_range"]  # fixtures this module's tests use

pytestmark = [
    accounts_group,  # its accounts have the same names as test_tenant_isolation's
    pytest.mark.slow,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("ssh") is None, reason="OpenSSH's client is not installed"),
]


@pytest.fixture
async def gateway(open_data_dir: Path, uid_range: tuple[int, int]) -> AsyncIterator[Api]:
    first, last = uid_range
    settings = make_settings(
        open_data_dir,
        run_as_user=True,
        uid_min=first,
        uid_max=last,
        ssh_port=0,
        stop_grace_seconds=1.0,
    )
    async for api in open_api(settings):
        yield api
    cleanup_data_dir(open_data_dir)  # before the accounts go: userdel refuses a running user


class OpenSSH:
    """OpenSSH's client against the test's gateway, with alice's key."""

    def __init__(self, api: Api, key_file: Path, login: str) -> None:
        assert api.ctx.ssh_gateway is not None
        self.argv = [
            "ssh", "-p", str(api.ctx.ssh_gateway.port), "-i", str(key_file),
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
        ]  # fmt: skip
        self.login = login

    async def run(self, command: str, tty: bool = False) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            *(["-tt"] if tty else []),
            f"{self.login}@127.0.0.1",
            "--",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(b""), 30)
        assert process.returncode is not None
        return process.returncode, out.decode(errors="replace"), err.decode(errors="replace")


async def alice_in_a_task(
    api: Api, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[OpenSSH, dict[str, object], int]:
    """alice's running job with start_ssh (and `env`), her client, and her account's uid."""
    alice = await person(api, "alice")
    key_file = tmp_path / "id_ed25519"
    alice.key.write_private_key(str(key_file))
    key_file.chmod(0o600)
    recipe = job("train", "exec sleep 120", start_ssh=True, environment_variables=env or {})
    applied = await api.client.put("/api/recipes", json=recipe, headers=alice.headers)
    assert applied.status_code == 201, applied.text
    started = await api.client.post(
        f"/api/jobs/{applied.json()['state']['id']}/start", headers=alice.headers
    )
    assert started.status_code == 200, started.text
    run = await wait_run(api.client, started.json()["run"]["id"], "running")
    users = {u["username"]: u["uid"] for u in (await api.client.get("/api/users")).json()["users"]}
    return OpenSSH(api, key_file, "train"), run, int(users["alice"])


def task_cgroup(run: dict[str, object]) -> str:
    """The unified-hierarchy line of the task's main process's /proc/PID/cgroup."""
    pids = _task_pids(str(run["id"]))
    assert pids, "the task's process"
    lines = Path(f"/proc/{pids[0]}/cgroup").read_text().splitlines()
    return next(line for line in lines if line.startswith("0::"))


def _task_pids(run_id: str) -> list[int]:
    """Processes of the run's task running `sleep` (the task's own command)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if f"FLOTILLA_RUN_ID={run_id}".encode() in environ.split(b"\0") and comm == "sleep":
            found.append(int(entry))
    return found


ROOT_MARKER = r"""
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>
__attribute__((constructor)) static void mark(void) {
    const char *path = getenv("FLO_TEST_MARK");
    if (path && geteuid() == 0) close(open(path, O_CREAT | O_WRONLY, 0644));
}
"""


def root_marker(tmp_path: Path) -> tuple[dict[str, str], Path] | None:
    """A task environment that leaves a file if any root process runs with it
    (LD_PRELOAD of a library only root can read); None without a C compiler."""
    cc = shutil.which("cc")
    if cc is None:
        return None
    source, library = tmp_path / "mark.c", tmp_path / "mark.so"
    source.write_text(ROOT_MARKER)
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    marker = tmp_path / "root-ran"
    return {"LD_PRELOAD": str(library), "FLO_TEST_MARK": str(marker)}, marker


@isolated
async def test_a_session_runs_as_the_tasks_user_in_its_cgroup_and_view(
    gateway: Api, tmp_path: Path
) -> None:
    api = gateway
    marking = root_marker(tmp_path)
    env = {"GREETING": "hello", **(marking[0] if marking else {})}
    ssh, run, uid = await alice_in_a_task(api, tmp_path, env)
    data_dir = api.ctx.settings.data_dir
    code, out, err = await ssh.run(
        "id -u; id -g; echo $GREETING; cat /proc/self/status | grep NoNewPrivs"
    )
    assert code == 0, err
    lines = out.split()
    assert lines[0] == str(uid) and lines[2] == "hello", out
    assert lines[1] != "0" and "NoNewPrivs:\t1" in out, out
    # The task's environment (its user's to set) never reached a root process.
    assert marking is None or not marking[1].exists()
    code, out, err = await ssh.run(f"cat {data_dir}/admin-token")
    assert code != 0 and "No such file or directory" in err, out + err
    cgroup = task_cgroup(run)
    code, out, err = await ssh.run("cat /proc/self/cgroup")
    assert code == 0 and cgroup in out.splitlines(), (cgroup, out, err)
    # With a terminal: the same user, cgroup and view, and a controlling terminal.
    code, out, err = await ssh.run(
        f"id -u; cat /proc/self/cgroup; tty; cat {data_dir}/admin-token; exit 0", tty=True
    )
    lines = out.replace("\r", "").splitlines()
    assert code == 0 and str(uid) in lines and cgroup in lines, out + err
    assert any(line.startswith("/dev/pts/") for line in lines), out
    assert "No such file or directory" in out, out


@isolated
@pytest.mark.skipif(sftp_server() is None, reason="OpenSSH's sftp-server is not installed")
async def test_sftp_writes_files_as_the_tasks_user(gateway: Api, tmp_path: Path) -> None:
    api = gateway
    ssh, _, uid = await alice_in_a_task(api, tmp_path)
    sftp = [a if a != "ssh" else "sftp" for a in ssh.argv]
    sftp[sftp.index("-p")] = "-P"
    process = await asyncio.create_subprocess_exec(
        *sftp,
        "-b",
        "-",
        "train@127.0.0.1",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(b"mkdir made-by-sftp\n"), 30)
    assert process.returncode == 0, err
    code, out_text, _ = await ssh.run("stat -c %u made-by-sftp")
    assert code == 0 and out_text.strip() == str(uid), out_text


def test_a_task_that_cannot_be_entered_is_refused() -> None:
    """Refused when the task's process is gone; a process of the server's own user
    (no isolation) needs no entry."""
    assert task_entry(os.getpid()) is None
    with pytest.raises(CannotEnter, match="gone"):
        task_entry(2**22 + 1)  # above the kernel's highest pid


def test_the_helper_runs_nothing_when_it_cannot_enter(tmp_path: Path) -> None:
    """A namespace that cannot be entered (here: not a namespace at all) stops the
    helper before the command, with a message and exit status 1."""
    not_a_namespace = os.open(tmp_path, os.O_RDONLY | os.O_CLOEXEC)
    entry = TaskEntry(65534, 65534, (), (), not_a_namespace)
    argv, env_fd = entry.start(["echo", "RAN"], {"PATH": os.defpath}, "/", tty=False)
    try:
        done = subprocess.run(
            argv, env={}, pass_fds=(not_a_namespace, env_fd), capture_output=True, text=True
        )
    finally:
        os.close(env_fd)
        entry.close()
    assert done.returncode == 1 and "RAN" not in done.stdout, done
    assert done.stderr.startswith("flotilla: cannot enter the task: OSError"), done.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it drops to nobody")
def test_the_helper_runs_a_command_found_on_the_tasks_path_as_the_user(tmp_path: Path) -> None:
    """The command gets the environment handed over, looked up on its PATH after
    the drop (when the interpreter's own library may be out of the user's reach)."""
    namespace = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    entry = TaskEntry(65534, 65534, (), (), namespace)
    env = {"PATH": os.defpath, "GREETING": "hello there"}
    argv, env_fd = entry.start(["sh", "-c", "id -u; echo $GREETING; pwd"], env, "/tmp", tty=False)
    try:
        done = subprocess.run(
            argv, env={}, pass_fds=(namespace, env_fd), capture_output=True, text=True
        )
    finally:
        os.close(env_fd)
        entry.close()
    assert done.returncode == 0 and done.stdout.split("\n")[:3] == ["65534", "hello there", "/tmp"]
