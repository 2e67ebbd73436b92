"""The REST API on both stores: recipes, job actions, errors, authentication."""

from __future__ import annotations

import pytest

from tests.conftest import Api
from tests.factories import job, wait_run


async def test_apply_get_list_delete_round_trip(api: Api) -> None:
    client = api.client
    created = await client.put("/api/recipes", json=job("alpha", "echo a", description="first"))
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["type"] == "job" and body["spec"]["name"] == "alpha"
    assert body["spec"]["owner"] == "admin" and body["state"]["version"] == 1
    job_id = body["state"]["id"]

    got = (await client.get("/api/recipes/job/alpha")).json()
    assert got["spec"]["description"] == "first" and got["state"]["id"] == job_id
    assert (await client.get("/api/recipes/jobs/alpha")).json()["state"]["id"] == job_id

    await client.put("/api/recipes", json=job("beta", "echo b"))
    listed = (await client.get("/api/recipes", params={"type": "job"})).json()
    assert [r["spec"]["name"] for r in listed["recipes"]] == ["alpha", "beta"]
    assert listed["next_key"] is None
    assert len((await client.get("/api/recipes", params={"name": "al"})).json()["recipes"]) == 1

    deleted = await client.delete(f"/api/jobs/{job_id}")
    assert deleted.status_code == 204
    assert (await client.get("/api/recipes/job/alpha")).status_code == 404
    assert (await client.get(f"/api/jobs/{job_id}")).status_code == 404
    # The name is free again and a new resource gets a new id.
    again = (await client.put("/api/recipes", json=job("alpha", "echo again"))).json()
    assert again["state"]["id"] != job_id and again["state"]["version"] == 1


async def test_apply_is_idempotent_and_keeps_versions(api: Api) -> None:
    client = api.client
    first = (await client.put("/api/recipes", json=job("v", "echo 1"))).json()
    same = (await client.put("/api/recipes", json=job("v", "echo 1"))).json()
    assert same["state"]["version"] == 1 and same["state"]["id"] == first["state"]["id"]
    changed = (await client.put("/api/recipes", json=job("v", "echo 2"))).json()
    assert changed["state"]["version"] == 2
    versions = (await client.get("/api/recipes/job/v/versions")).json()["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    assert [v["spec"]["command"] for v in versions] == ["echo 1", "echo 2"]
    # An exported recipe (with its read-only state) applies again unchanged.
    exported = (await client.get("/api/recipes/job/v")).json()
    assert (await client.put("/api/recipes", json=exported)).json()["state"]["version"] == 2


async def test_invalid_and_unknown_fields_name_every_path(api: Api) -> None:
    bad = job("x", "", scale=0, comand="typo", git_repositories=[{"url": "u", "referenc": "main"}])
    response = await api.client.put("/api/recipes", json=bad)
    assert response.status_code == 422
    body = response.json()
    assert body["error_code"] == "invalid_recipe"
    problems = {e["field"]: e["message"] for e in body["errors"]}
    assert "spec.scale" in problems and "spec.command" in problems
    assert "did you mean 'command'" in problems["spec.comand"]
    assert "did you mean 'reference'" in problems["spec.git_repositories[0].referenc"]
    assert (await api.client.get("/api/recipes")).json()["recipes"] == []  # nothing stored


@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        ({"type": "jobz", "spec": {"name": "a", "command": "x"}}, "type"),
        ({"type": "job"}, "spec"),
        ({"type": "job", "spec": {"name": "Bad Name!", "command": "x"}}, "spec.name"),
        (
            {"type": "job", "spec": {"name": "a", "command": "x", "schedule": "every day"}},
            "spec.schedule",
        ),
        (
            {"type": "job", "spec": {"name": "a", "command": "x", "resources": {"gpu": "H100:x"}}},
            "spec.resources.gpu",
        ),
        (
            {
                "type": "job",
                "spec": {"name": "a", "command": "x", "concurrency_policy": "Sometimes"},
            },
            "spec.concurrency_policy",
        ),
        (
            {
                "type": "job",
                "spec": {"name": "a", "command": "x", "environment_variables": {"1BAD": "v"}},
            },
            "spec.environment_variables",
        ),
        (
            {
                "type": "job",
                "spec": {
                    "name": "a",
                    "command": "x",
                    "git_repositories": [{"url": "--upload-pack=evil"}],
                },
            },
            "spec.git_repositories[0].url",
        ),
        (
            {"type": "job", "spec": {"name": "a", "command": "x", "max_duration": "soon"}},
            "spec.max_duration",
        ),
        ({"type": "job", "spec": {"name": "a", "command": "x"}, "extra": 1}, "extra"),
        (job("a", "x", working_directory="../.."), "spec.working_directory"),
        (
            job("a", "x", git_repositories=[{"url": "u", "path": "../x"}]),
            "spec.git_repositories[0].path",
        ),
    ],
)
async def test_bad_recipes_get_4xx_naming_the_field(
    api: Api, recipe: dict[str, object], field: str
) -> None:
    response = await api.client.put("/api/recipes", json=recipe)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_malformed_bodies_are_4xx_not_500(api: Api) -> None:
    client = api.client
    not_json = await client.put(
        "/api/recipes", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert (await client.put("/api/recipes", json=[1, 2])).status_code == 422
    assert (await client.put("/api/recipes", json="job")).status_code == 422


async def test_unknown_resources_are_404(api: Api) -> None:
    client = api.client
    for method, path in [
        ("GET", "/api/recipes/job/missing"),
        ("GET", "/api/jobs/0123"),
        ("POST", "/api/jobs/0123/start"),
        ("POST", "/api/jobs/0123/stop"),
        ("DELETE", "/api/jobs/0123"),
        ("GET", "/api/runs/0123"),
        ("GET", "/api/active/pods/nope-1-0"),
        ("GET", "/api/no/such/route"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["message"]


# The only routes open without a credential: logging in, and the public keys.
PUBLIC_ROUTES = {
    ("POST", "/api/auth/login"),
    ("POST", "/api/auth/refresh"),
    ("GET", "/api/auth/oidc/login"),
    ("GET", "/api/auth/oidc/callback"),
    ("GET", "/api/auth/jwks"),
    ("GET", "/.well-known/jwks.json"),
    ("POST", "/api/agents/join"),  # authenticated by its one-time join token
}


async def test_auth_required_on_every_api_route(api: Api) -> None:
    spec = (await api.client.get("/openapi.json")).json()
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    assert len(routes) > 20
    assert set(routes) >= PUBLIC_ROUTES  # the allow-list names real routes only
    for method, path in routes:
        url = path.replace("{", "").replace("}", "")  # any value: auth comes first
        if (method, path) in PUBLIC_ROUTES:
            response = await api.client.request(method, url, headers={"Authorization": ""})
            assert response.status_code != 401, (method, path, response.text)
            continue
        for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": "Basic abc"}):
            response = await api.client.request(
                method, url, headers={**headers, "Authorization": headers.get("Authorization", "")}
            )
            assert response.status_code == 401, (method, path, headers, response.status_code)
            assert response.json()["error_code"] == "unauthorized"


async def test_start_stop_restart(api: Api) -> None:
    client = api.client
    applied = (await client.put("/api/recipes", json=job("sleeper", "sleep 30"))).json()
    job_id = applied["state"]["id"]
    first = (await client.post(f"/api/jobs/{job_id}/start")).json()["run"]
    await wait_run(client, first["id"], "running")
    assert (await client.get("/api/recipes/job/sleeper")).json()["state"]["status"] == "running"

    restarted = (await client.post(f"/api/jobs/{job_id}/restart")).json()["run"]
    assert restarted["number"] == 2
    stopped = await wait_run(client, first["id"], "stopped")
    assert stopped["stop_reason"] == "stopped by admin"
    await wait_run(client, restarted["id"], "running")

    await client.post(f"/api/jobs/{job_id}/stop")
    done = await wait_run(client, restarted["id"], "stopped")
    assert done["finished_at"] and done["tasks"][0]["status"] == "stopped"
    runs = (await client.get(f"/api/jobs/{job_id}/runs")).json()["runs"]
    assert [r["number"] for r in runs] == [2, 1]
    assert (await client.get("/api/recipes/job/sleeper")).json()["state"]["status"] == "stopped"


async def test_openapi_is_valid_and_documents_the_recipe(api: Api) -> None:
    from openapi_spec_validator import validate

    spec = (await api.client.get("/openapi.json")).json()
    validate(spec)
    body = spec["paths"]["/api/recipes"]["put"]["requestBody"]["content"]["application/json"]
    branches = body["schema"]["oneOf"]  # one per recipe type
    assert [b["properties"]["type"]["enum"] for b in branches] == [
        ["deployment"],
        ["fleet"],
        ["group"],
        ["job"],
        ["load_balancer"],
        ["project"],
        ["user"],
    ]
    assert "GitRepository" in spec["components"]["schemas"]
