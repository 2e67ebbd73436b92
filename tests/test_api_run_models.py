"""The typed contract of the fleets, queue, runs, usage, budgets, agents and load
balancer routes (`flotilla/api/`): every route's 2xx body is described in
`/openapi.json` (a model, or the content type of a text answer), its errors are
the shared `ErrorBody`, and each main model reads a real server's answer back to
exactly the JSON it was sent: no key the model lacks, none it adds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flotilla.api.agents import AgentList, Joined, JoinToken
from flotilla.api.budgets import Budget, BudgetList, BudgetStatus, BudgetStatusList
from flotilla.api.fleets import Fleet, FleetList
from flotilla.api.load_balancers import LoadBalancer, LoadBalancerList, LoadBalancerPolicy
from flotilla.api.queue import Queue, SchedulerPolicy
from flotilla.api.runs import Run, RunEvents
from flotilla.api.usage import RunCost, SaturnDailyUsageList, UsageReport
from flotilla.lb.testing import TagBackend, free_port
from flotilla.runtime.tls import DEFAULT_AGENT_PORT, make_csr, new_key
from tests.api_checks import check, documented, openapi, refused
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_usage, apply_and_start, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(60)

H100 = "h100-80gb-sxm-ib.8x"
PREFIXES = (
    "/api/fleets",
    "/api/queue",
    "/api/scheduler",
    "/api/runs",
    "/api/usage",
    "/api/orgs/{org}/usage",
    "/api/orgs/{org}/members/{user}/usage",
    "/api/budgets",
    "/api/agents",
    "/api/load_balancers",
)
# The routes that answer text, and its content type.
TEXT = {("get", "/api/usage"): "text/csv", ("get", "/api/runs/{run_id}/logs"): "text/plain"}


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): op
        for path, ops in spec["paths"].items()
        if path.startswith(PREFIXES)
        for method, op in ops.items()
    }


def test_the_join_requests_documented_default_port_is_the_agents() -> None:
    from flotilla.api.agents import JoinRequest

    assert f"port {DEFAULT_AGENT_PORT}" in str(JoinRequest.model_fields["listen"].description)


async def test_every_route_describes_its_2xx_body_and_errors(sqlite_api: Api) -> None:
    spec = await openapi(sqlite_api)
    ops = operations(spec)
    assert len(ops) == 26, sorted(ops)  # 3 fleets, 3 queue, 3 runs, 4 usage, 5+3+5
    for (method, path), op in ops.items():
        (ok,) = [s for s in op["responses"] if s.startswith("2")]
        content = op["responses"][ok].get("content", {})
        if ok == "204":
            assert not content, (method, path)
        elif (method, path) in TEXT:
            assert TEXT[method, path] in content, (method, path, content)
        else:
            ref = content["application/json"]["schema"].get("$ref", "")
            assert ref.startswith("#/components/schemas/"), (method, path, content)
        errors = [s for s in op["responses"] if s.startswith("4")]
        assert "401" in errors or path == "/api/agents/join", (method, path)
        for status in errors:
            # FastAPI documents a 422 for any parameter: only its own is allowed here.
            if not documented(spec, method, path, int(status)):
                assert status == "422", (method, path, status)


async def test_runs_and_the_queue_read_back(gpu_api: Api) -> None:
    api = gpu_api
    spec = await openapi(api)
    _, run_id = await apply_and_start(api.client, job("hello", "echo hello"))
    await wait_run(api.client, run_id, "succeeded")
    run = await check(api, Run, "GET", f"/api/runs/{run_id}")
    assert run.status == "succeeded" and run.tasks[0].status == "succeeded"
    events = await check(api, RunEvents, "GET", f"/api/runs/{run_id}/events")
    assert events.events and all(e.run_id == run_id for e in events.events)
    logs = await api.client.get(f"/api/runs/{run_id}/logs")
    assert logs.headers["content-type"].startswith("text/plain") and "hello" in logs.text
    await refused(api, spec, "GET", "/api/runs/nope", "/api/runs/{run_id}", 404)
    path = "/api/runs/{run_id}/logs"
    await refused(api, spec, "GET", f"/api/runs/{run_id}/logs?rank=9", path, 404)
    await refused(api, spec, "GET", f"/api/runs/{run_id}/logs?rank=x", path, 422)

    async def cost() -> RunCost | None:
        found = await check(api, RunCost, "GET", f"/api/usage/runs/{run_id}")
        return found if found.tasks and found.tasks[0].ended_at else None

    metered = await wait_for(cost, what="the run's usage row")
    assert metered.run_id == run_id and metered.tasks[0].instance_type == "local"

    policy = {"user_quota": {"admin": 0}, "user_weight": {"admin": 2.5}}
    put = await check(api, SchedulerPolicy, "PUT", "/api/scheduler/policy", json=policy)
    assert put == await check(api, SchedulerPolicy, "GET", "/api/scheduler/policy")
    bad = {"user_weight": {"admin": 0}}
    await refused(api, spec, "PUT", "/api/scheduler/policy", "/api/scheduler/policy", 422, json=bad)
    _, held = await apply_and_start(api.client, job("held", "true", resources={"gpu": "H100:1"}))

    async def queued() -> Queue | None:
        queue = await check(api, Queue, "GET", "/api/queue")
        return queue if queue.runs and queue.runs[0].reason else None

    waiting = (await wait_for(queued, what="a reason in the queue")).runs
    assert [(r.run_id, r.position, r.gpu) for r in waiting] == [(held, 1, "H100:1")]
    assert "user quota" in waiting[0].reason


@pytest.fixture
async def sim_api(data_dir: Path) -> AsyncIterator[Api]:
    """This machine and the simulated cloud, whose nodes are up in 0.2 s."""
    async for item in open_api(make_settings(data_dir, sim_provisioning_delay=0.2)):
        yield item


async def test_fleets_read_back(sim_api: Api) -> None:
    api = sim_api
    spec = await openapi(api)
    shape = {"name": "gpus", "instance_type": H100, "region": "us-east1", "nodes": 1}
    recipe = {"type": "fleet", "spec": shape}
    applied = await api.client.put("/api/recipes", json=recipe)
    assert applied.status_code == 201, applied.text

    async def ready() -> Fleet | None:
        fleet = await check(api, Fleet, "GET", "/api/fleets/gpus")
        return fleet if [m.state for m in fleet.members] == ["ready"] else None

    fleet = await wait_for(ready, what="a ready member")
    assert fleet.nodes == 1 and fleet.gpus_per_node == 8 and fleet.price_per_hour > 0
    listed = await check(api, FleetList, "GET", "/api/fleets")
    assert [(f.id, f.name) for f in listed.fleets] == [(fleet.id, "gpus")]
    assert (await api.client.delete("/api/fleets/gpus")).status_code == 204
    await refused(api, spec, "GET", "/api/fleets/gpus", "/api/fleets/{name}", 404)
    await refused(api, spec, "DELETE", "/api/fleets/gpus", "/api/fleets/{name}", 404)


async def test_load_balancers_read_back(sim_api: Api) -> None:
    api = sim_api
    spec = await openapi(api)
    backend = await TagBackend("a").start()
    try:
        listener = {
            "port": free_port(),
            "host": "127.0.0.1",
            "backends": [f"127.0.0.1:{backend.port}"],
            "health_check": {"interval": 0.2, "timeout": 0.5},
        }
        recipe = {"type": "load_balancer", "spec": {"name": "web", "listeners": [listener]}}
        assert (await api.client.put("/api/recipes", json=recipe)).status_code == 201

        async def probed() -> LoadBalancer | None:
            lb = await check(api, LoadBalancer, "GET", "/api/load_balancers/web")
            backends = [b for ls in lb.listeners for b in ls.backends]
            return lb if backends and backends[0].health_history else None

        lb = await wait_for(probed, what="a probed backend")
        assert lb.status == "serving" and lb.spec["name"] == "web"
        listed = await check(api, LoadBalancerList, "GET", "/api/load_balancers")
        assert [b.name for b in listed.load_balancers] == ["web"]
    finally:
        await backend.stop()
    policy = {"allowed_backend_cidrs": ["10.0.0.0/8"], "allow_wildcard_listen": True}
    url = "/api/load_balancers/policy"
    put = await check(api, LoadBalancerPolicy, "PUT", url, json=policy)
    assert put == await check(api, LoadBalancerPolicy, "GET", url)
    await refused(api, spec, "PUT", url, url, 422, json={"allowed_listen_cidrs": ["nope"]})
    assert (await api.client.delete("/api/load_balancers/web")).status_code == 204
    await refused(api, spec, "GET", "/api/load_balancers/web", "/api/load_balancers/{name}", 404)


DAY = datetime(2026, 10, 6, tzinfo=UTC)
WINDOW = {"since": "2026-10-01", "until": "2026-11-01"}


async def test_usage_and_budgets_read_back(api: Api) -> None:
    spec = await openapi(api)
    await add_usage(api.ctx, user="alice", project="vision", started_at=DAY, ended_at=DAY)
    await add_usage(
        api.ctx, user="bob", started_at=DAY, ended_at=DAY + timedelta(hours=25), spot=True
    )
    params = {**WINDOW, "by": "project,day"}
    report = await check(api, UsageReport, "GET", "/api/usage", params=params)
    assert {(r.project, r.day) for r in report.rows} == {(None, "2026-10-06"), (None, "2026-10-07")}
    for row in report.rows:  # only the key fields of `by`
        assert row.model_fields_set >= {"project", "day"} and "user" not in row.model_fields_set
    csv = await api.client.get("/api/usage", params={**params, "format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv")
    saturn = {"start": WINDOW["since"], "end": WINDOW["until"]}
    daily = await check(
        api, SaturnDailyUsageList, "GET", "/api/orgs/default/usage/daily", params=saturn
    )
    assert {u.user for u in daily.usage} == {"bob"}  # alice's row bills no time
    path = "/api/orgs/{org}/usage/daily"
    await refused(api, spec, "GET", "/api/orgs/other/usage/daily", path, 404)
    backwards = {"start": "2026-11-01", "end": "2026-10-01"}
    await refused(api, spec, "GET", "/api/orgs/default/usage/daily", path, 400, params=backwards)
    await refused(api, spec, "GET", "/api/usage", "/api/usage", 422, params={"by": "colour"})

    limits = {"max_gpus": 4, "dollars_per_month": 100, "warn_fraction": 0.5}
    url, path = "/api/budgets/user/admin", "/api/budgets/{scope_kind}/{scope_name}"
    made = await check(api, Budget, "PUT", url, json=limits)
    status = await check(api, BudgetStatus, "GET", url)
    assert status.id == made.id and status.state == "ok"
    assert [(u.limit, u.used, u.max) for u in status.limits] == [
        ("max_gpus", 0, 4),
        ("dollars_per_month", 0.0, 100.0),
    ]
    assert (await check(api, BudgetList, "GET", "/api/budgets")).budgets == [made]
    assert (await check(api, BudgetStatusList, "GET", "/api/budgets/status")).budgets == [status]
    await refused(api, spec, "PUT", "/api/budgets/user/nobody", path, 422, json=limits)
    await refused(api, spec, "GET", "/api/budgets/team/admin", path, 422)
    assert (await api.client.delete(url)).status_code == 204
    await refused(api, spec, "DELETE", url, path, 404)


async def test_agents_read_back(sqlite_api: Api) -> None:
    api = sqlite_api
    spec = await openapi(api)
    made = await check(api, JoinToken, "POST", "/api/agents/join-tokens", 201, json={})
    assert made.node is None and made.token
    body = {"token": made.token, "node": "gpu-1", "csr": make_csr(new_key(), "gpu-1").decode()}
    joined = await check(api, Joined, "POST", "/api/agents/join", json=body)
    assert joined.node == "gpu-1" and "BEGIN CERTIFICATE" in joined.certificate
    agents = await check(api, AgentList, "GET", "/api/agents")
    assert [(a.node, a.serial) for a in agents.agents] == [("gpu-1", joined.serial)]
    path = "/api/agents/join"
    await refused(api, spec, "POST", path, path, 401, json=body)  # the token is spent
    path = "/api/agents/join-tokens"
    await refused(api, spec, "POST", path, path, 422, json={"expires_in_seconds": 1})
