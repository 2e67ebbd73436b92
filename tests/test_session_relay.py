"""A host agent's session relay (`runtime/sessions/relay.py`) on its own: a ticket
opens a session in its task, once; a spent, expired or made-up ticket opens
nothing; no ticket is issued for a task that is not running, nor for a directory
that is not one of the agent's tasks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncssh
import pytest

from flotilla.runtime import proctree
from flotilla.runtime.agent import Agent
from flotilla.runtime.sessions.relay import SessionRelay


@pytest.fixture
def task(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A task directory under RUNS/run/attempt-0/rank-0 whose process runs."""
    task_dir = tmp_path / "runs" / "run1" / "attempt-0" / "rank-0"
    task_dir.mkdir(parents=True)
    env = {**os.environ, "FLOTILLA_RUN_ID": "run1", "FLOTILLA_RANK": "0"}
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    # Popen may return (vfork) before the kernel has set up the new program's
    # environment: until then /proc/<pid>/environ reads empty, and the relay
    # rightly says the task is not running.
    deadline = time.monotonic() + 10
    while (proctree.environment(process.pid) or {}).get("FLOTILLA_RUN_ID") != "run1":
        assert time.monotonic() < deadline, "the task's environment never showed"
        time.sleep(0.001)
    (task_dir / "started.json").write_text(json.dumps({"pid": process.pid}))
    yield task_dir, process
    process.kill()
    process.wait()


@pytest.fixture
async def relay(tmp_path: Path) -> AsyncIterator[SessionRelay]:
    relay = SessionRelay(tmp_path / "relay_key")
    await relay.start("127.0.0.1", 0, tmp_path / "runs")
    yield relay
    await relay.close()


async def login(relay: SessionRelay, secret: str) -> asyncssh.SSHClientConnection:
    key = asyncssh.import_public_key(relay.host_key.export_public_key())
    return await asyncssh.connect(
        "127.0.0.1",
        relay.port,
        username="flotilla",
        password=secret,
        known_hosts=([key], [], []),
        client_keys=None,
        agent_path=None,
        preferred_auth="password",
    )


async def test_a_ticket_opens_its_task_once(
    relay: SessionRelay, task: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    task_dir, _ = task
    ticket = relay.issue(str(task_dir), "run1", 0, "job t run 1 rank 0", [3])
    assert ticket["port"] == relay.port and ticket["user"] == "flotilla"
    async with await login(relay, ticket["ticket"]) as conn:
        ran = await conn.run("echo $FLOTILLA_RUN_ID $CUDA_VISIBLE_DEVICES", check=True)
        assert str(ran.stdout).split() == ["run1", "3"]
    with pytest.raises(asyncssh.PermissionDenied):
        await login(relay, ticket["ticket"])  # spent
    with pytest.raises(asyncssh.PermissionDenied):
        await login(relay, "made-up")


async def test_an_expired_ticket_opens_nothing(
    relay: SessionRelay, task: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    task_dir, _ = task
    secret = relay.issue(str(task_dir), "run1", 0, "t", [])["ticket"]
    ticket = relay.tickets[secret]
    relay.tickets[secret] = type(ticket)(ticket.target, ticket.expires - 3600)
    with pytest.raises(asyncssh.PermissionDenied):
        await login(relay, secret)


async def test_no_ticket_for_a_stopped_task_or_a_stranger(
    relay: SessionRelay, task: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    task_dir, process = task
    with pytest.raises(ValueError, match="not running on this host"):
        relay.issue(str(task_dir), "run2", 0, "job t run 2 rank 0", [])  # not its run
    process.kill()
    process.wait()
    with pytest.raises(ValueError, match="not running on this host"):
        relay.issue(str(task_dir), "run1", 0, "job t run 1 rank 0", [])
    agent = Agent(None, 60.0, data_dir=tmp_path, ssh_listen=("127.0.0.1", 0))
    request = {"op": "ssh_ticket", "run_id": "run1", "rank": 0, "label": "x"}
    with pytest.raises(ValueError, match="not a task dir of this agent"):
        agent._handle({**request, "task_dir": "/etc"})
    with pytest.raises(ValueError, match="not a task dir of this agent"):
        agent._handle({**request, "task_dir": f"{tmp_path}/runs/../../x"})
