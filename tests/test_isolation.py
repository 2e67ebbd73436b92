"""Tenant isolation on a node (runtime/isolation), through real supervisors driven
by the node agent: a task runs as its owner's account, cannot see the server's data
dir, stays inside its cgroup's limits, and dies whole when stopped; afterwards no
account, cgroup or mount is left. Skipped, with the probe's reason, where the node
cannot isolate (not root, no cgroups)."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import signal
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from flotilla.runtime.agent_client import AgentClient
from flotilla.runtime.isolation import FULL, NodeIsolation, probe
from flotilla.runtime.isolation.accounts import AccountConflict, ensure_account, remove_account
from flotilla.runtime.procs import process_start_ticks
from flotilla.runtime.proctree import session_id
from flotilla.runtime.taskspec import EXITED, LOST, Limits, RunAs, SecretFile, TaskSpec, TaskState
from tests.factories import in_worker_share, wait_for

PROBE = probe()
pytestmark = pytest.mark.skipif(PROBE.level != FULL, reason=f"isolation: {PROBE.summary()}")


@pytest.fixture
def account() -> Iterator[RunAs]:
    """A test account with numbers no one has (nor another worker of this test run
    draws), made by the agent's own code."""
    while True:
        uid = 4242000 + in_worker_share(1000)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            break
    run_as = RunAs(user=f"flotest{uid}", uid=uid, gid=uid)
    ensure_account(run_as)
    ensure_account(run_as)  # idempotent
    yield run_as
    remove_account(run_as)
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)


@pytest.fixture
async def agent(data_dir: Path) -> AsyncIterator[AgentClient]:
    async def ignore(_state: TaskState) -> None:
        return None

    client = AgentClient(data_dir, ignore, idle_exit=60.0)
    await client.connect()
    yield client
    await client.close()  # data_dir's cleanup kills the agent and what it started


def node(data_dir: Path) -> NodeIsolation:
    """What the agent of `data_dir` uses (same identity: its lock file)."""
    return NodeIsolation.detect(identity=str((data_dir / "agent.lock").resolve()))


def spec(data_dir: Path, name: str, command: str | list[str], **fields: object) -> TaskSpec:
    """A task under data_dir/runs (where the test cleanup finds it): a string
    command through bash, a list as argv."""
    task_dir = data_dir / "runs" / name
    return TaskSpec(
        task_id=name,
        task_dir=str(task_dir),
        workdir=str(task_dir / "root" / "workspace"),
        env={"PATH": os.environ["PATH"], "DATA": str(data_dir), "TASK_DIR": str(task_dir)},
        shell=command if isinstance(command, str) else None,
        argv=command if isinstance(command, list) else None,
        grace_seconds=0.5,
        **fields,  # type: ignore[arg-type]
    )


async def run_to_end(agent: AgentClient, task: TaskSpec, timeout: float = 20.0) -> TaskState:
    await agent.launch(task)
    return await wait_exited(agent, task, timeout)


async def wait_exited(agent: AgentClient, task: TaskSpec, timeout: float = 20.0) -> TaskState:
    async def exited() -> TaskState | None:
        [state] = await agent.inspect([(task.task_id, task.task_dir)])
        return state if state.phase == EXITED else None

    result: TaskState = await wait_for(exited, timeout, what=f"{task.task_id} to exit")
    return result


def main_log(task: TaskSpec) -> str:
    return (Path(task.task_dir) / "main.log").read_text()


def assert_nothing_left(data_dir: Path, task: TaskSpec) -> None:
    """No cgroup directory of the task, no hiding mount outside its namespace."""
    cgroup = node(data_dir).cgroup_for(task.task_id)
    assert cgroup is not None
    assert [d for d in cgroup.dirs.values() if d.exists()] == []
    assert "flotilla-hidden" not in Path("/proc/self/mountinfo").read_text()


def test_probe_says_what_the_node_isolates() -> None:
    assert PROBE.summary() == "full" and PROBE.root
    assert PROBE.cgroups in ("v2", "hybrid") and set(PROBE.limits) == {"memory", "cpu", "pids"}
    assert PROBE.group_kill and PROBE.mount_namespace and PROBE.accounts


def test_accounts_never_take_over_another_account() -> None:
    root = pwd.getpwuid(0).pw_name
    with pytest.raises(AccountConflict, match="exists with uid 0"):
        ensure_account(RunAs(user=root, uid=4242999, gid=4242999))
    with pytest.raises(AccountConflict, match="uid 0 belongs to user"):
        ensure_account(RunAs(user="flotest-nobody", uid=0, gid=0))


async def test_task_runs_as_its_user_and_sees_only_its_own_files(
    agent: AgentClient, data_dir: Path, account: RunAs
) -> None:
    hello = await agent.request("hello")
    assert hello["isolation"]["level"] == FULL
    (data_dir / "admin-token").write_text("ADMIN-SECRET\n")
    other = data_dir / "runs" / "other" / "root"
    other.mkdir(parents=True)
    (other / "notes").write_text("OTHER-TENANT\n")
    shell = (
        "id -u; id -un; echo home=$HOME user=$USER; cat token.txt; echo;"
        " cat $DATA/admin-token; cat $DATA/runs/other/root/notes; ls -A $DATA;"
        " ls $TASK_DIR > /dev/null && echo listed; touch made; cat /proc/self/cgroup; true"
    )
    files = [SecretFile(str(data_dir / "runs" / "mine" / "root" / "workspace" / "token.txt"), "T")]
    task = spec(data_dir, "mine", shell, run_as=account, hide=[str(data_dir)], files=files)
    state = await run_to_end(agent, task)
    log = main_log(task).splitlines()
    home = f"home={task.task_dir}/home user={account.user}"
    assert log[:4] == [str(account.uid), account.user, home, "T"], log
    text = "\n".join(log)
    assert "ADMIN-SECRET" not in text and "OTHER-TENANT" not in text
    assert f"{data_dir}/admin-token: No such file or directory" in text
    assert "runs" in log  # `ls -A $DATA`: the hidden dir holds only the way to the task
    assert "listed" in log and state.exit_code == 0  # the rest ran (cat's failures aside)
    task_group = [line for line in log if line.startswith(("0::", "4:memory:"))]
    assert task_group and all(line.endswith("/mine") for line in task_group), log
    workdir = Path(task.workdir)
    assert (workdir / "made").stat().st_uid == account.uid
    owned = Path(task.task_dir) / "root"
    assert (owned.stat().st_uid, stat.S_IMODE(owned.stat().st_mode)) == (account.uid, 0o700)
    secret = workdir / "token.txt"
    assert (secret.stat().st_uid, stat.S_IMODE(secret.stat().st_mode)) == (account.uid, 0o600)
    assert os.stat(task.task_dir).st_uid == 0  # the supervisor's files stay root's
    assert_nothing_left(data_dir, task)


async def test_fork_bomb_stops_at_pids_max(
    agent: AgentClient, data_dir: Path, account: RunAs
) -> None:
    bomb = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while n < 1000:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60); os._exit(0)\n"
        "        n += 1\n"
        "except OSError as e:\n"
        "    print('stopped after', n, e.strerror, flush=True)\n"
    )
    limits = Limits(pids=20)
    task = spec(data_dir, "bomb", ["/usr/bin/python3", "-c", bomb], run_as=account, limits=limits)
    state = await run_to_end(agent, task)
    assert state.exit_code == 0, main_log(task)
    words = main_log(task).split()
    assert words[:2] == ["stopped", "after"] and int(words[2]) < 20, words
    assert_nothing_left(data_dir, task)  # the 60 s sleepers were killed with the task


async def test_memory_hog_is_killed_at_its_limit(
    agent: AgentClient, data_dir: Path, account: RunAs
) -> None:
    hog = "a = bytearray(512 << 20); print('survived')"
    limits = Limits(memory_bytes=64 << 20)
    task = spec(data_dir, "hog", ["/usr/bin/python3", "-c", hog], run_as=account, limits=limits)
    state = await run_to_end(agent, task)
    assert state.exit_code == 137 and "survived" not in main_log(task)
    assert_nothing_left(data_dir, task)


async def test_a_setsid_child_dies_when_the_task_is_stopped(
    agent: AgentClient, data_dir: Path, account: RunAs
) -> None:
    shell = "(setsid sleep 60 & echo $! > escaped.tmp; mv escaped.tmp escaped); exec sleep 60"
    task = spec(data_dir, "escape", shell, run_as=account, limits=Limits(cpus=0.5))
    await agent.launch(task)
    escaped = Path(task.workdir) / "escaped"
    await wait_for(lambda: _exists(escaped), what="the escaped child")
    pid = int(escaped.read_text())
    started = await wait_for(lambda: _state(agent, task), what="the task to run")

    async def escaped_session() -> bool:  # `$!` is written before the child runs setsid
        return session_id(pid) != session_id(started.pid)  # out of the task's session and group

    await wait_for(escaped_session, what="the child in a session of its own")
    await agent.stop(task.task_id, task.task_dir)
    state = await wait_exited(agent, task)
    assert state.stopped and state.exit_code == 143
    assert process_start_ticks(pid) is None  # cgroup.kill reached it
    assert_nothing_left(data_dir, task)


async def _exists(path: Path) -> bool:
    return await asyncio.to_thread(path.exists)


async def _state(agent: AgentClient, task: TaskSpec) -> TaskState | None:
    [state] = await agent.inspect([(task.task_id, task.task_dir)])
    return state if state.pid else None


async def test_an_agent_kills_the_cgroup_of_a_task_whose_supervisor_died(
    agent: AgentClient, data_dir: Path, account: RunAs
) -> None:
    shell = "(setsid sleep 60 & echo $! > escaped.tmp; mv escaped.tmp escaped); exec sleep 60"
    task = spec(data_dir, "orphan", shell, run_as=account)
    await agent.launch(task)
    escaped = Path(task.workdir) / "escaped"
    await wait_for(lambda: _exists(escaped), what="the escaped child")
    pid = int(escaped.read_text())
    supervisor = json.loads((Path(task.task_dir) / "supervisor.json").read_text())["pid"]
    os.kill(supervisor, signal.SIGKILL)  # no one left to end the task but the agent
    await wait_for(lambda: _phase(agent, task, LOST), what="the task to be lost")
    reply = await agent.stop(task.task_id, task.task_dir)
    assert reply["signalled"] == "cgroup"
    assert process_start_ticks(pid) is None
    assert_nothing_left(data_dir, task)


async def _phase(agent: AgentClient, task: TaskSpec, phase: str) -> bool:
    [state] = await agent.inspect([(task.task_id, task.task_dir)])
    return state.phase == phase
