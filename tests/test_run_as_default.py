"""Isolation on by default (issue 12): FLOTILLA_RUN_AS_USER unset is `auto`, on for
every node that can isolate; `0` turns it off; `1` asks for it everywhere. Every
node shows what its tasks get in its `isolation` label (and what its agent can do
in `isolation_probe`): this machine's nodes from the server's own probe, hosts
with an agent of their own from theirs, each combined with the setting. Through
a real server as root: with the setting unset, alice's job runs as her UID; with
`0`, as the server's user."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flotilla.config import Settings
from flotilla.runtime.taskspec import RunAs
from flotilla.server.db.models import NodeModel, RunModel, TaskModel
from flotilla.server.services.fleets.agent_nodes import apply_inventory
from flotilla.server.services.fleets.node_isolation import (
    effective_isolation,
    node_probe,
    runs_as_user,
)
from flotilla.server.services.runs.launch import launch_requests
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_user, cleanup_data_dir, job, wait_run
from tests.test_tenant_isolation import accounts_group, isolated, open_data_dir, uid_range

__all__ = ["open_data_dir", "uid_range"]  # fixtures this module's tests use

pytestmark = pytest.mark.timeout(90)

PARTIAL = "partial (no cgroup.kill: a stop signals the group's members one by one)"
NOT_ROOT = "none (the agent runs as uid 1000, not root)"


# --- the setting and the labels ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, None), ("", None), ("auto", None), ("1", True), ("yes", True), ("0", False)],
)
def test_the_setting_is_auto_unless_given(
    monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool | None
) -> None:
    if value is None:
        monkeypatch.delenv("FLOTILLA_RUN_AS_USER", raising=False)
    else:
        monkeypatch.setenv("FLOTILLA_RUN_AS_USER", value)
    assert Settings.from_env().run_as_user is expected
    assert Settings().run_as_user is None  # what a server built in code gets too


def test_bad_values_are_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOTILLA_RUN_AS_USER", "maybe")
    with pytest.raises(ValueError, match="FLOTILLA_RUN_AS_USER must be 1, 0 or unset"):
        Settings.from_env()
    monkeypatch.delenv("FLOTILLA_RUN_AS_USER")
    monkeypatch.setenv("FLOTILLA_LOCAL_ISOLATION", "full")  # it may only weaken
    with pytest.raises(ValueError, match="FLOTILLA_LOCAL_ISOLATION must be"):
        Settings.from_env()


def test_what_tasks_get_from_the_probe_and_the_setting() -> None:
    assert [runs_as_user(p, None) for p in ("full", PARTIAL, NOT_ROOT)] == [True, False, False]
    assert [runs_as_user(p, True) for p in ("full", PARTIAL, NOT_ROOT)] == [True] * 3
    assert [runs_as_user(p, False) for p in ("full", PARTIAL, NOT_ROOT)] == [False] * 3
    assert effective_isolation("full", None) == effective_isolation("full", True) == "full"
    assert effective_isolation(NOT_ROOT, None) == effective_isolation(NOT_ROOT, True) == NOT_ROOT
    assert effective_isolation(PARTIAL, True) == PARTIAL
    auto_partial = effective_isolation(PARTIAL, None)
    assert (
        auto_partial.startswith("none (FLOTILLA_RUN_AS_USER is unset") and PARTIAL in auto_partial
    )
    off = effective_isolation("full", False)
    assert off.startswith("none (FLOTILLA_RUN_AS_USER=0: tasks run as the agent's user")
    assert effective_isolation("", None) == "none (unknown isolation: not reported)"


def _node(provider: str, **labels: Any) -> NodeModel:
    return NodeModel(name="n1", provider=provider, labels=labels, gpus=[])


def test_a_host_with_its_own_agent_shows_its_probe_with_the_setting() -> None:
    hello = {"inventory": {}, "isolation": {"level": "partial", "reason": PARTIAL[9:-1]}}
    for setting, expected in ((True, PARTIAL), (None, effective_isolation(PARTIAL, None))):
        node = _node("agent")
        apply_inventory(node, hello, setting)
        assert node.labels["isolation_probe"] == PARTIAL
        assert node.labels["isolation"] == expected
        assert node_probe(node, "full") == PARTIAL  # its own agent's, not this machine's
    # A sim instance that is a host of its own (an `agent` label) has its own probe;
    # one that is a process on this machine has this machine's.
    assert node_probe(_node("sim", agent="tls://10.0.0.2:7477", isolation="full"), NOT_ROOT) == (
        "full"
    )
    assert node_probe(_node("sim", isolation="full"), NOT_ROOT) == NOT_ROOT
    assert node_probe(_node("ssh"), "full") == "none (its agent has not answered yet)"


async def local_labels(api: Api) -> dict[str, Any]:
    node = (await api.client.get("/api/nodes/local")).json()
    return dict(node["labels"])


async def test_the_local_node_shows_the_setting_when_it_is_off(data_dir: Path) -> None:
    """`0`: every task runs as the server's user, as an admin chose; no node holds
    anyone's work back for it (one trust domain, shown, not silent)."""
    async for api in open_api(make_settings(data_dir, run_as_user=False)):
        labels = await local_labels(api)
        assert labels["isolation"].startswith("none (FLOTILLA_RUN_AS_USER=0")
        assert labels["isolation_probe"] == api.ctx.local_isolation
        alice = await add_user(api.ctx, "alice")
        run_id = await start(api, alice, "id -u")
        run = await wait_run(api.client, run_id, "succeeded", "failed")
        assert run["status"] == "succeeded"
        assert (await logs(api, run_id)).split() == [str(os.geteuid())]


# --- on by default, where this machine can isolate --------------------------------


@pytest.fixture
async def by_default(open_data_dir: Path, uid_range: tuple[int, int]) -> AsyncIterator[Api]:
    """A server with FLOTILLA_RUN_AS_USER unset (a UID block of its own)."""
    first, last = uid_range
    settings = make_settings(open_data_dir, run_as_user=None, uid_min=first, uid_max=last)
    async for api in open_api(settings):
        yield api
    cleanup_data_dir(open_data_dir)  # before the accounts go: userdel refuses a running user


async def start(api: Api, headers: httpx.Headers, command: str) -> str:
    applied = await api.client.put("/api/recipes", json=job("who", command), headers=headers)
    assert applied.status_code == 201, applied.text
    started = await api.client.post(
        f"/api/jobs/{applied.json()['state']['id']}/start", headers=headers
    )
    assert started.status_code == 200, started.text
    return str(started.json()["run"]["id"])


async def logs(api: Api, run_id: str) -> str:
    return (await api.client.get(f"/api/runs/{run_id}/logs")).text


@isolated
@accounts_group
async def test_with_the_setting_unset_a_job_runs_as_its_users_account(by_default: Api) -> None:
    api = by_default
    labels = await local_labels(api)
    assert labels["isolation"] == labels["isolation_probe"] == "full"
    alice = await add_user(api.ctx, "alice")
    run_id = await start(api, alice, "id -u; id -un; test -r $HOME && echo home-ok")
    run = await wait_run(api.client, run_id, "succeeded", "failed")
    users = {u["username"]: u for u in (await api.client.get("/api/users")).json()["users"]}
    assert (await logs(api, run_id)).split() == [str(users["alice"]["uid"]), "flo-alice", "home-ok"]
    assert run["status"] == "succeeded"


def test_a_run_is_confined_only_on_the_nodes_that_run_as_users() -> None:
    """A run across two nodes, one isolating and one not: only the task on the first
    gets the account, its limits and the paths to hide."""
    run = RunModel(id="r1", spec={"name": "j", "command": "true", "scale": 2}, attempt=0)
    tasks = [
        TaskModel(id=f"t{rank}", run_id="r1", attempt=0, rank=rank, node=node, gpus=[])
        for rank, node in enumerate(("strong", "weak"))
    ]
    account = RunAs("flo-alice", 2_001_000_001, 2_001_000_001, [])
    requests = launch_requests(
        run, tasks, "j", {}, [], 29500, 2.0, None, account, ["/data"], frozenset({"strong"})
    )
    by_node = {r.task.node: r for r in requests}
    assert by_node["strong"].run_as == account and by_node["strong"].hide == ["/data"]
    assert by_node["strong"].limits is not None
    assert by_node["weak"].run_as is None and by_node["weak"].limits is None
    assert by_node["weak"].hide == []
