"""A node that cannot isolate tasks runs only the work of admins and of the users and
groups an admin trusts there (issue 12): through a real server whose machine is
taken to report `none` (FLOTILLA_LOCAL_ISOLATION), the admin's job runs, alice's
waits saying why and how to allow it, and runs once `PUT /api/nodes/local/trusted`
names her (or a group of hers); cron ticks count as the recipe's owner or last
applier; the API refuses non-admins, unknown nodes and unknown names; `flo node
trust` and `flo node describe` against a real `flo server`. And the queue core:
a barred run is placed, reserves and preempts only where it may go."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from flotilla.clock import FakeClock
from flotilla.core.queue import QueuedRun, RunningRun, schedule
from flotilla.core.topology import CapacityIndex, Node
from flotilla.server.reconcilers.cron import Cron
from tests.conftest import Api, make_settings, open_api
from tests.factories import ADMIN_TOKEN, ServerProcess, add_user, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(90)

WEAK = "none (simulated: the agent runs as uid 1000, not root)"
T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


def held(node: str, user: str, extra: str = "") -> str:
    return (
        f"waiting: node {node} cannot isolate tasks (isolation: {WEAK}) and {user} is not"
        f" trusted there; an admin can allow it: flo node trust {node} --user {user}{extra}"
    )


@pytest.fixture
async def weak(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    """A server with FLOTILLA_RUN_AS_USER unset whose machine cannot isolate."""
    settings = make_settings(
        data_dir, database_url, run_as_user=None, local_isolation=WEAK, local_gpus="H100:1"
    )
    async for api in open_api(settings):
        yield api


async def start(api: Api, headers: httpx.Headers | None, recipe: dict[str, Any]) -> str:
    applied = await api.client.put("/api/recipes", json=recipe, headers=headers)
    assert applied.status_code == 201, applied.text
    job_id = applied.json()["state"]["id"]
    started = await api.client.post(f"/api/jobs/{job_id}/start", headers=headers)
    assert started.status_code == 200, started.text
    return str(started.json()["run"]["id"])


async def held_with(api: Api, run_id: str, reason: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        run = (await api.client.get(f"/api/runs/{run_id}")).json()
        return run if run["reason"] == reason else None

    run: dict[str, Any] = await wait_for(check, what=f"run {run_id} held: {reason}")
    assert run["status"] == "pending", run
    return run


async def trust(api: Api, body: dict[str, Any], headers: httpx.Headers | None = None) -> Any:
    return await api.client.put("/api/nodes/local/trusted", json=body, headers=headers)


async def test_an_untrusted_users_work_waits_until_an_admin_trusts_them(weak: Api) -> None:
    api = weak
    node = (await api.client.get("/api/nodes/local")).json()
    assert node["labels"]["isolation"] == WEAK and node["labels"]["isolation_probe"] == WEAK
    mine = await start(api, None, job("admins", "true", resources={"gpu": "H100:1"}))
    assert (await wait_run(api.client, mine, "succeeded", "failed"))["status"] == "succeeded"

    alice = await add_user(api.ctx, "alice")
    bob = await add_user(api.ctx, "bob", groups=["ml"])
    on_cpu = await start(api, alice, job("cpu", "true"))
    on_gpu = await start(api, alice, job("gpu", "true", resources={"gpu": "H100:1"}))
    bobs = await start(api, bob, job("bobs", "true"))
    await held_with(api, on_cpu, held("local", "alice"))
    await held_with(api, on_gpu, held("local", "alice"))
    await held_with(api, bobs, held("local", "bob"))

    answer = await trust(api, {"users": ["alice"]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["labels"]["trusted"]["users"] == ["alice"]
    for run_id in (on_cpu, on_gpu):
        assert (await wait_run(api.client, run_id, "succeeded", "failed"))["status"] == "succeeded"
    await held_with(api, bobs, held("local", "bob"))  # not trusted: still waiting

    answer = await trust(api, {"users": ["alice"], "groups": ["ml"]})  # bob is in ml
    assert answer.status_code == 200, answer.text
    assert (await wait_run(api.client, bobs, "succeeded", "failed"))["status"] == "succeeded"
    detail = (await api.client.get("/api/nodes/local")).json()
    assert detail["labels"]["trusted"]["groups"] == ["ml"]
    messages = [e["message"] for e in detail["events"]]
    assert "local: trusted users alice; groups ml" in messages

    # Trusting nobody again holds new work of theirs back; the admin's still runs.
    assert (await trust(api, {})).json()["labels"].get("trusted") is None
    later = await start(api, alice, job("later", "true"))
    await held_with(api, later, held("local", "alice"))


@pytest.fixture
async def weak_clocked(data_dir: Path) -> AsyncIterator[tuple[Api, FakeClock]]:
    clock = FakeClock(T0)
    settings = make_settings(data_dir, run_as_user=None, local_isolation=WEAK)
    async for api in open_api(settings, clock=clock):
        yield api, clock


async def test_cron_ticks_are_held_for_the_owner_or_the_last_applier(
    weak_clocked: tuple[Api, FakeClock],
) -> None:
    """The run's user is whom its tasks would run as (`launch.pick_run_user`)."""
    api, clock = weak_clocked
    alice = await add_user(api.ctx, "alice", groups=["team"])
    bob = await add_user(api.ctx, "bob", groups=["team"])
    every = {"schedule": "*/5 * * * *"}
    jobs = {}
    for headers, recipe in (
        (alice, job("mine", "true", **every)),
        (alice, job("shared", "true", owner="team", **every)),
        (bob, job("shared", "echo v2", owner="team", **every)),  # bob applied it last
    ):
        applied = await api.client.put("/api/recipes", json=recipe, headers=headers)
        assert applied.status_code == 201, applied.text
        jobs[recipe["spec"]["name"]] = applied.json()["state"]["id"]
    clock.advance(5 * 60)
    await Cron(api.ctx).step()

    async def reasons() -> dict[str, str] | None:
        found = {}
        for name, job_id in jobs.items():
            runs = (await api.client.get(f"/api/jobs/{job_id}/runs")).json()["runs"]
            if runs and runs[0]["reason"].startswith("waiting:"):
                assert runs[0]["trigger"] == "cron"
                found[name] = runs[0]["reason"]
        return found if len(found) == 2 else None

    assert await wait_for(reasons, what="both ticks held") == {
        "mine": held("local", "alice"),
        "shared": held("local", "bob"),
    }


async def test_only_admins_may_trust_and_only_known_names(weak: Api) -> None:
    api = weak
    alice = await add_user(api.ctx, "alice")
    await add_user(api.ctx, "bob", groups=["ml"])
    refused = await trust(api, {"users": ["alice"]}, headers=alice)
    assert refused.status_code == 403, refused.text
    missing = await api.client.put("/api/nodes/nowhere/trusted", json={"users": ["alice"]})
    assert missing.status_code == 404, missing.text
    unknown = await trust(api, {"users": ["bob", "zed"], "groups": ["ml", "nobody"]})
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["errors"] == [
        {"field": "users[1]", "message": "no user named 'zed'"},
        {"field": "groups[1]", "message": "no group named 'nobody'"},
    ]
    assert (await trust(api, {"users": ["bob"], "extra": 1})).status_code == 422
    node = (await api.client.get("/api/nodes/local")).json()
    assert "trusted" not in node["labels"]  # nothing changed by the refused ones


async def test_a_deleted_and_recreated_user_is_not_trusted_by_name(weak: Api) -> None:
    api = weak
    await add_user(api.ctx, "carol")
    assert (await trust(api, {"users": ["carol"]})).status_code == 200
    users = (await api.client.get("/api/users")).json()["users"]
    carol_id = next(u["id"] for u in users if u["username"] == "carol")
    assert (await api.client.delete(f"/api/users/{carol_id}")).status_code in (200, 204)
    again = await add_user(api.ctx, "carol")
    run_id = await start(api, again, job("c", "true"))
    await held_with(api, run_id, held("local", "carol"))


# --- the CLI against a real server ------------------------------------------------


def flo(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    env.update({"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": ADMIN_TOKEN, "COLUMNS": "200"})
    return subprocess.run(
        ["flo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_flo_node_trust_and_describe(data_dir: Path) -> None:
    # FLOTILLA_RUN_AS_USER empty: unset, as a fresh install has it.
    server = ServerProcess(data_dir, FLOTILLA_RUN_AS_USER="", FLOTILLA_LOCAL_ISOLATION=WEAK)
    server.start()
    try:
        with server.client() as client:
            for name in ("alice", "bob"):
                made = client.post("/api/users", json={"username": name})
                assert made.status_code == 201, made.text
            assert client.post("/api/groups", json={"name": "ml"}).status_code == 201
        added = flo(server, "node", "trust", "local", "--user", "alice", "--group", "ml")
        assert added.returncode == 0, added.stderr
        assert added.stdout.splitlines() == [
            "node local: trusted users alice; groups ml",
            f"  isolation: {WEAK}",
        ]
        more = flo(server, "node", "trust", "local", "-u", "bob")
        assert more.stdout.splitlines()[0] == "node local: trusted users alice, bob; groups ml"
        fewer = flo(server, "node", "trust", "local", "--remove", "-u", "alice", "-g", "ml")
        assert fewer.stdout.splitlines()[0] == "node local: trusted users bob"
        described = flo(server, "node", "describe", "local")
        assert described.returncode == 0, described.stderr
        assert f"isolation: {WEAK}" in described.stdout
        assert "trusted: users bob" in described.stdout
        as_json = json.loads(flo(server, "node", "describe", "local", "--json").stdout)
        assert as_json["labels"]["trusted"]["users"] == ["bob"]
        wrong = flo(server, "node", "trust", "local", "--replace", "-u", "zed")
        assert wrong.returncode != 0 and "no user named 'zed'" in wrong.stderr + wrong.stdout
        cleared = flo(server, "node", "trust", "local", "--replace")
        assert cleared.stdout.splitlines()[0] == "node local: trusted nobody"
    finally:
        server.stop()


# --- the queue core ---------------------------------------------------------------


def gpu_node(name: str, gpus: int, free: int | None = None) -> Node:
    return Node(name, "H100", gpus, gpus if free is None else free, "p", "s", "l", name)


def test_a_barred_run_goes_only_where_it_may_and_holds_nobody_back() -> None:
    index = CapacityIndex([gpu_node("weak", 8), gpu_node("strong", 8, free=0)])
    why = "waiting: node weak cannot isolate tasks"
    queue = [
        QueuedRun(
            "alice",
            "alice",
            "p",
            1,
            8,
            "H100",
            queued_at=1,
            barred=frozenset({"weak"}),
            barred_reason=why,
        ),
        QueuedRun("admin", "admin", "p", 1, 8, "H100", queued_at=2),
    ]
    decision = schedule(index, queue, [])
    # alice's run fits only the node she may not use: it waits with the reason and
    # reserves nothing there, so the admin's later run takes it.
    assert decision.reasons == {"alice": why}
    assert decision.placed == {"admin": ("weak",)}


def test_a_barred_run_is_placed_and_preempts_only_on_allowed_nodes() -> None:
    index = CapacityIndex([gpu_node("weak", 8), gpu_node("strong", 8, free=0)])
    barred = frozenset({"weak"})
    low = RunningRun("low", "bob", "p", priority=-1, placement=(("strong", 8),))
    urgent = QueuedRun(
        "alice", "alice", "p", 1, 8, "H100", priority=5, barred=barred, barred_reason="held"
    )
    decision = schedule(index, [urgent], [low])
    assert decision.placed == {} and list(decision.preempt) == ["low"]
    # Nothing to preempt where it may go: it waits with the reason, reserving nothing.
    decision = schedule(index, [urgent], [])
    assert decision.preempt == {} and decision.reasons == {"alice": "held"}
    # Where the allowed node is free, it goes there, never to the barred one.
    index = CapacityIndex([gpu_node("weak", 8), gpu_node("strong", 8)])
    assert schedule(index, [urgent], []).placed == {"alice": ("strong",)}
