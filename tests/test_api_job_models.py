"""The typed contract of the Saturn-shaped routes (jobs, recipes, deployments,
active pods, status, offers; `flotilla/api/`): every route's 2xx body is described
in `/openapi.json`, its errors are the shared `ErrorBody`, and each main model
reads a real server's answer back to exactly the JSON it was sent (the keys and
values saturn-client reads, none added, none lost)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.routing import APIRoute

from flotilla.api.deployments import Deployment, DeploymentList
from flotilla.api.jobs import Job, JobList, JobRestarted, JobRunList, JobStarted, JobStopped
from flotilla.api.offers import OfferList
from flotilla.api.pods import PodHistory, PodLogs, PodSummary, PodSummaryList
from flotilla.api.recipes import Recipe, RecipeList, RecipeVersionList
from flotilla.api.status import Me, OrgList, ServerSizes, ServerStatus, SshGateway
from flotilla.server.routers import deployments, jobs, offers, pods, recipes, status
from tests.api_checks import check, documented, openapi, refused
from tests.conftest import Api, make_settings, open_api
from tests.factories import TASK_PYTHON, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(90)

ROUTERS: tuple[APIRouter, ...] = (
    jobs.router,
    recipes.router,
    deployments.router,
    pods.router,
    status.router,
    offers.router,
)
H100 = "h100-80gb-sxm-ib.8x"
REPLICA = Path(__file__).resolve().parents[1] / "examples" / "http_replica.py"


def operations() -> set[tuple[str, str]]:
    """(method, path) of every route these routers serve."""
    return {
        (method.lower(), route.path)
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }


@pytest.fixture
async def sim_api(data_dir: Path) -> AsyncIterator[Api]:
    """This machine and the simulated cloud (whose offers `/api/offers` lists)."""
    async for item in open_api(make_settings(data_dir, sim_provisioning_delay=0.2)):
        yield item


async def test_every_route_describes_its_2xx_body_and_errors(sqlite_api: Api) -> None:
    spec = await openapi(sqlite_api)
    ops = operations()
    assert len(ops) == 36, sorted(ops)  # 15 jobs, 5 recipes, 9 deployments, 3 pods, 6 status
    for method, path in ops:
        op = spec["paths"][path][method]
        (ok,) = [s for s in op["responses"] if s.startswith("2")]
        content = op["responses"][ok].get("content", {})
        if ok == "204":
            assert not content, (method, path)
        else:
            ref = content["application/json"]["schema"].get("$ref", "")
            assert ref.startswith("#/components/schemas/"), (method, path, content)
        errors = [s for s in op["responses"] if s.startswith("4")]
        assert "401" in errors, (method, path)
        for status_code in errors:
            # FastAPI documents a 422 for any parameter: only its own is allowed here.
            if not documented(spec, method, path, int(status_code)):
                assert status_code == "422", (method, path, status_code)


async def test_recipes_and_jobs_read_back(sqlite_api: Api) -> None:
    api = sqlite_api
    spec = await openapi(api)
    applied = await check(api, Recipe, "PUT", "/api/recipes", 201, json=job("hello", "echo hi"))
    assert applied.state is not None
    job_id = applied.state["id"]
    listed = await check(api, RecipeList, "GET", "/api/recipes", params={"type": "jobs"})
    assert [r.spec["name"] for r in listed.recipes] == ["hello"]
    template = await check(api, Recipe, "GET", "/api/recipes/job/hello?as_template=true")
    assert "state" not in template.model_fields_set and template.spec == applied.spec
    me = await check(api, Recipe, "GET", "/api/recipes/user/admin")
    assert me.state is not None and me.state["status"] == "applied"
    versions = await check(api, RecipeVersionList, "GET", "/api/recipes/job/hello/versions")
    assert [v.version for v in versions.versions] == [1]
    await refused(
        api, spec, "GET", "/api/recipes/job/nope", "/api/recipes/{recipe_type}/{name}", 404
    )

    started = await check(api, JobStarted, "POST", f"/api/jobs/{job_id}/start")
    assert started.id == job_id and started.status == "pending"
    await wait_run(api.client, started.run.id, "succeeded")
    got = await check(api, Job, "GET", f"/api/jobs/{job_id}")
    assert got.state.last_run is not None and got.state.last_run.status == "succeeded"
    assert (await check(api, Job, "GET", f"/api/jobs/{job_id}/recipe")) == got
    assert [j.state.id for j in (await check(api, JobList, "GET", "/api/jobs")).jobs] == [job_id]
    runs = await check(api, JobRunList, "GET", f"/api/jobs/{job_id}/runs")
    assert [r.id for r in runs.runs] == [started.run.id] and runs.runs[0].tasks
    history = await check(api, PodHistory, "GET", f"/api/jobs/{job_id}/history")
    assert [(p.run_id, p.status) for p in history.pods] == [(started.run.id, "completed")]
    logs = await check(api, PodLogs, "GET", f"/api/jobs/{job_id}/logs")
    assert "hi" in logs.logs

    scheduled = await check(
        api, Job, "POST", f"/api/jobs/{job_id}/schedule", json={"schedule": "0 3 * * *"}
    )
    assert scheduled.state.scheduled and scheduled.state.next_scheduled_at
    unscheduled = await check(api, Job, "POST", f"/api/jobs/{job_id}/unschedule")
    assert not unscheduled.state.scheduled and unscheduled.state.next_scheduled_at is None
    options = {"cron_schedule_options": {"backoff_limit": 2}}
    patched = await check(api, Job, "PATCH", f"/api/jobs/{job_id}", json=options)
    assert patched.spec["retries"] == 2
    await refused(api, spec, "GET", "/api/jobs/nope", "/api/jobs/{job_id}", 404)
    path = "/api/jobs/{job_id}"
    await refused(api, spec, "PATCH", f"/api/jobs/{job_id}", path, 422, json={"retries": "x"})
    # The body is typed: a bad cron option is named where it is, an unknown one refused.
    for options, field in (
        ({"backoff_limit": "x"}, "body.cron_schedule_options.backoff_limit"),
        ({"every": "day"}, "body.cron_schedule_options.every"),
    ):
        body = {"cron_schedule_options": options}
        bad = await refused(api, spec, "PATCH", f"/api/jobs/{job_id}", path, 422, json=body)
        assert [e["field"] for e in bad.json()["errors"]] == [field], bad.text
    assert "JobUpdate" in str(spec["paths"][path]["patch"]["requestBody"])


async def test_active_pods_and_job_stops_read_back(sqlite_api: Api) -> None:
    api = sqlite_api
    spec = await openapi(api)
    applied = await api.client.put("/api/recipes", json=job("long", "echo up; sleep 60"))
    job_id = applied.json()["state"]["id"]
    first = await check(api, JobRestarted, "POST", f"/api/jobs/{job_id}/restart")
    run = await wait_run(api.client, first.run.id, "running")
    params = {"workload_type": "job", "workload_id": job_id}

    async def listed() -> PodSummaryList | None:
        found = await check(api, PodSummaryList, "GET", "/api/active/pods", params=params)
        return found if found.pod_summaries else None

    active = await wait_for(listed, what="an active pod")
    (summary,) = active.pod_summaries
    assert summary.name == run["tasks"][0]["name"] and summary.controller_uid == first.run.id
    assert all(c.logs is None for c in summary.container_summaries)
    pod = await check(api, PodSummary, "GET", f"/api/active/pods/{summary.name}")
    assert [c.name for c in pod.container_summaries] == ["main"]
    assert pod.init_container_summaries[0].logs is not None
    await check(api, PodLogs, "GET", f"/api/active/pods/{summary.name}/logs")
    path = "/api/active/pods/{name}/logs"
    url = f"/api/active/pods/{summary.name}/logs?container_name=other"
    await refused(api, spec, "GET", url, path, 404)
    await refused(api, spec, "GET", "/api/active/pods/nope", "/api/active/pods/{name}", 404)

    one = await check(api, Job, "POST", f"/api/jobs/{job_id}/stop/{first.run.number}")
    assert one.state.id == job_id
    await wait_run(api.client, first.run.id, "stopped")
    again = await check(api, JobStarted, "POST", f"/api/jobs/{job_id}/start")
    await wait_run(api.client, again.run.id, "running")
    stopped = await check(api, JobStopped, "POST", f"/api/jobs/{job_id}/stop")
    assert stopped.stopped_runs == 1
    await wait_run(api.client, again.run.id, "stopped")
    path = "/api/jobs/{job_id}/stop/{run_name}"
    await refused(api, spec, "POST", f"/api/jobs/{job_id}/stop/99", path, 404)
    assert (await api.client.delete(f"/api/jobs/{job_id}")).status_code == 204
    await refused(api, spec, "DELETE", f"/api/jobs/{job_id}", "/api/jobs/{job_id}", 404)


async def test_status_routes_and_offers_read_back(sim_api: Api) -> None:
    api = sim_api
    spec = await openapi(api)
    server = await check(api, ServerStatus, "GET", "/api/status")
    assert server.status == "ok"
    me = await check(api, Me, "GET", "/api/user")
    assert me.username == "admin" and me.admin and me.scopes
    sizes = await check(api, ServerSizes, "GET", "/api/info/servers")
    assert sizes.sizes[H100].gpu == 8 and sizes.sizes[H100].cores > 0
    orgs = await check(api, OrgList, "GET", "/api/orgs")
    assert [o.is_primary for o in orgs.orgs] == [True]
    ssh = await check(api, SshGateway, "GET", "/api/ssh")
    assert ssh.enabled == (ssh.port is not None)
    offers = await check(api, OfferList, "GET", "/api/offers", params={"gpu": "H100:8"})
    assert offers.offers and all(o.gpus == 8 for o in offers.offers)
    await refused(api, spec, "GET", "/api/offers?gpu=H100:x", "/api/offers", 422)


@pytest.fixture
async def deploy_api(data_dir: Path) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir, stop_grace_seconds=1.0)):
        yield item


async def test_deployments_read_back(deploy_api: Api) -> None:
    api = deploy_api
    spec = await openapi(api)
    recipe = {
        "type": "deployment",
        "spec": {
            "name": "web",
            "command": f"{TASK_PYTHON} {REPLICA}",
            "health_check": {"interval": 0.2, "timeout": 0.5, "failure_count": 2},
        },
    }
    assert (await api.client.put("/api/recipes", json=recipe)).status_code == 201

    async def ready() -> Deployment | None:
        found = await check(api, Deployment, "GET", "/api/deployments/web")
        return found if any(r.ready for r in found.replicas) else None

    web = await wait_for(ready, timeout=60, what="a ready replica")
    assert web.status == "running" and web.endpoints.http.endswith("/d/~admin/web/")
    assert list(web.endpoints.tcp) == ["8000"]
    assert web.load_balancer.listeners and web.load_balancer.listeners[0].backends
    listed = await check(api, DeploymentList, "GET", "/api/deployments")
    assert [d.id for d in listed.deployments] == [web.id]
    history = await check(api, PodHistory, "GET", f"/api/deployments/{web.id}/history")
    assert history.pods[0].run_id == web.replicas[0].run_id
    await check(api, PodLogs, "GET", "/api/deployments/web/logs")
    stopped = await check(api, Deployment, "POST", "/api/deployments/web/stop")
    assert stopped.stopped and stopped.desired_replicas == 0
    started = await check(api, Deployment, "POST", "/api/deployments/web/start")
    assert not started.stopped
    restarted = await check(api, Deployment, "POST", f"/api/deployments/{web.id}/restart")
    assert restarted.id == web.id
    assert (await api.client.delete("/api/deployments/web")).status_code == 204
    path = "/api/deployments/{name}"
    await refused(api, spec, "GET", "/api/deployments/web", path, 404)
    await refused(api, spec, "DELETE", "/api/deployments/web", path, 404)
