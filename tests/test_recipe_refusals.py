"""Refused recipes and requests: each bad input answers a 4xx naming its field, stores
nothing, and leaves every listing working (issue 11: a lone surrogate in a job's
command was stored with a 500, after which `GET /api/recipes` and `GET /api/jobs`
answered 500 for everyone who could see it)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flotilla.errors import InvalidRecipe
from flotilla.recipes.envelope import load_documents, parse_recipe
from flotilla.server.db.models import RecipeModel
from tests.conftest import Api, make_settings, open_api
from tests.factories import job


async def send(
    api: Api, method: str, url: str, body: Any, params: dict[str, str] | None = None
) -> httpx.Response:
    """`body` as JSON text with every non-ASCII character escaped, the way a client
    sends a lone surrogate (`\\ud800`) that UTF-8 could not carry."""
    return await api.client.request(
        method,
        url,
        content=json.dumps(body),
        headers={"content-type": "application/json"},
        params=params,
    )


def fields(response: httpx.Response) -> list[str]:
    return [e["field"] for e in response.json().get("errors", [])]


async def assert_listings_work(api: Api, *absent: str) -> None:
    """Everything that lists recipes still answers, and none of `absent` is stored."""
    for url in ("/api/recipes", "/api/jobs"):
        listed = await api.client.get(url)
        assert listed.status_code == 200, listed.text
    names = [r["spec"]["name"] for r in (await api.client.get("/api/recipes")).json()["recipes"]]
    assert not set(names) & set(absent), names
    async with api.ctx.sessions() as session:
        stored = (await session.execute(select(RecipeModel.name))).scalars().all()
    assert not set(stored) & set(absent), stored


UNSTORABLE = [
    (job("surrogate", "echo \ud800"), "spec.command"),
    (job("nul", "echo \x00"), "spec.command"),
    (job("argv", ["echo", "ok", "\udfff"]), "spec.command[2]"),
    (job("env-value", environment_variables={"A": "x\ud800y"}), "spec.environment_variables.A"),
    (job("env-key", environment_variables={"A\ud800": "x"}), "spec.environment_variables"),
    (job("descr", description="\x00"), "spec.description"),
    (job("tag", tags={"k": "\ud800"}), "spec.tags.k"),
    ({"type": "job", "spec": {"name": "\ud800", "command": "true"}}, "spec.name"),
    ({"type": "job\ud800", "spec": {"name": "x", "command": "true"}}, "type"),
]


async def test_unstorable_text_is_refused_and_nothing_is_stored(api: Api) -> None:
    for recipe, field in UNSTORABLE:
        for method in ("PUT", "POST"):
            answer = await send(api, method, "/api/recipes", recipe)
            assert answer.status_code == 422, answer.text
            assert any(f.endswith(field) for f in fields(answer)), answer.text
    await assert_listings_work(api, *(str(r["spec"]["name"]) for r, _ in UNSTORABLE))


def test_the_recipe_parser_refuses_unstorable_text_by_field() -> None:
    """The same check runs offline (`flo apply` validates before it sends)."""
    for recipe, field in UNSTORABLE:
        with pytest.raises(InvalidRecipe) as refused:
            parse_recipe(recipe)
        assert field in [p.path for p in refused.value.problems]
        json.dumps(refused.value.as_dict(), ensure_ascii=False).encode()  # the answer encodes


async def test_a_type_that_is_no_string_is_refused(api: Api) -> None:
    for recipe_type in ({}, [], 1, True):
        recipe = {"type": recipe_type, "spec": {"name": "t"}}
        answer = await send(api, "PUT", "/api/recipes", recipe)
        assert answer.status_code == 422, answer.text
        assert fields(answer) == ["type"]
    await assert_listings_work(api, "t")


async def test_fields_longer_than_their_columns_are_refused(api: Api) -> None:
    for recipe, field in (
        ({**job("long"), "schema_version": "2025." + "1" * 40}, "schema_version"),
        (job("long", owner="o" * 200), "spec.owner"),
    ):
        answer = await send(api, "PUT", "/api/recipes", recipe)
        assert answer.status_code == 422 and fields(answer) == [field], answer.text
    await assert_listings_work(api, "long")


UNRUNNABLE_SCHEDULES = [
    ("0 0 30 2 *", "never fires"),
    ("0 0 31 4 *", "never fires"),
    ("@every 99999999999d", "at most 366d"),
    ("* * * * * *", "has 6 fields"),
    ("* * * * * * *", "has 7 fields"),
    ("@reboot", "is not one of"),
    ("@every 10s", "minimum interval between ticks is 60s"),
]


async def test_schedules_the_server_cannot_run_are_refused(api: Api) -> None:
    for schedule, says in UNRUNNABLE_SCHEDULES:
        answer = await send(api, "PUT", "/api/recipes", job("cron", "true", schedule=schedule))
        assert answer.status_code == 422, answer.text
        assert fields(answer) == ["spec.schedule"] and says in answer.text
    await assert_listings_work(api, "cron")


@pytest.fixture
async def strict_api(data_dir: Path, database_url: str | None) -> AsyncIterator[Api]:
    """The app with a minimum schedule interval of 5 minutes."""
    settings = make_settings(data_dir, database_url, min_schedule_interval=300.0)
    async for item in open_api(settings):
        yield item


async def test_every_path_that_sets_a_schedule_keeps_the_minimum(strict_api: Api) -> None:
    api = strict_api
    for too_often in ("* * * * *", "0-4 * * * *", "@every 4m"):
        answer = await send(api, "PUT", "/api/recipes", job("fast", "true", schedule=too_often))
        assert answer.status_code == 422 and fields(answer) == ["spec.schedule"], answer.text
    await assert_listings_work(api, "fast")

    applied = await send(api, "PUT", "/api/recipes", job("slow", "true", schedule="*/5 * * * *"))
    assert applied.status_code == 201, applied.text
    job_id = applied.json()["state"]["id"]
    patched = await send(
        api, "PATCH", f"/api/jobs/{job_id}", {"cron_schedule_options": {"schedule": "@every 1m"}}
    )
    assert patched.status_code == 422 and fields(patched) == ["spec.schedule"], patched.text
    scheduled = await send(api, "POST", f"/api/jobs/{job_id}/schedule", {"schedule": "@every 10s"})
    assert scheduled.status_code == 422 and fields(scheduled) == ["spec.schedule"], scheduled.text
    now = (await api.client.get(f"/api/jobs/{job_id}")).json()
    assert now["spec"]["schedule"] == "*/5 * * * *" and now["state"]["version"] == 1


async def test_enabling_a_schedule_stored_before_the_rules_is_a_422(api: Api) -> None:
    """A seconds schedule stored by an older server is refused when enabled again."""
    applied = await send(api, "PUT", "/api/recipes", job("old", "true", schedule="@hourly"))
    job_id = applied.json()["state"]["id"]
    assert (await api.client.post(f"/api/jobs/{job_id}/unschedule")).status_code == 200
    async with api.ctx.transaction() as session:
        model = await session.get(RecipeModel, job_id)
        assert model is not None
        model.spec = {**model.spec, "schedule": "* * * * * *"}
    enabled = await api.client.post(f"/api/jobs/{job_id}/schedule")
    assert enabled.status_code == 422 and fields(enabled) == ["spec.schedule"], enabled.text
    assert (await api.client.get(f"/api/jobs/{job_id}")).json()["state"]["scheduled"] is False


async def test_audit_before_id_out_of_range_is_a_422(api: Api) -> None:
    for before_id in (str(2**63), str(2**64), str(2**31), "-1", "0", "x"):
        answer = await api.client.get("/api/audit", params={"before_id": before_id})
        assert answer.status_code == 422, answer.text
        assert fields(answer) == ["query.before_id"]
    answer = await api.client.get("/api/audit", params={"before_id": str(2**31 - 1)})
    assert answer.status_code == 200, answer.text


def _load_balancer(**listener: Any) -> dict[str, Any]:
    listener = {"port": 18080, "backends": ["10.0.0.1:80"], **listener}
    return {"type": "load_balancer", "spec": {"name": "lb", "listeners": [listener]}}


@pytest.mark.parametrize(
    "extra",
    [
        {"health_check.timeout": 1},  # a dotted key: once a KeyError 'health_check'
        {"health_check": {"timeout": 2, "bogus": 1}},
        {"bogus": {"deep": [1, 2]}},
    ],
)
def test_unknown_fields_allowed_drops_them_wherever_they_are(extra: dict[str, Any]) -> None:
    recipe = parse_recipe(_load_balancer(**extra), enforce_unknown=False)
    listener = recipe.spec_dict()["listeners"][0]
    assert "bogus" not in listener and "health_check.timeout" not in listener
    assert listener["health_check"]["timeout"] in (5.0, 2.0)


async def test_applying_with_unknown_fields_allowed_stores_only_known_ones(api: Api) -> None:
    recipe = job("loose", "true", **{"resources.gpu": 1, "resources": {"cpu": 1, "x": 2}})
    answer = await send(api, "PUT", "/api/recipes", recipe, params={"enforce_unknown": "false"})
    assert answer.status_code == 201, answer.text
    spec = answer.json()["spec"]
    assert "resources.gpu" not in spec and spec["resources"]["cpu"] == 1
    still_bad = job("loose2", "true", **{"x.y": 1}, retries=-1)
    answer = await send(api, "PUT", "/api/recipes", still_bad, params={"enforce_unknown": "false"})
    assert answer.status_code == 422 and fields(answer) == ["spec.retries"], answer.text
    await assert_listings_work(api, "loose2")


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


async def test_deeply_nested_bodies_are_a_422(api: Api) -> None:
    for depth in (100, 5000):
        deep = "[" * depth + "]" * depth  # json.dumps itself could not write 5000 levels
        for url, body in (
            ("/api/recipes", f'{{"type": "job", "spec": {{"name": "deep", "tags": {deep}}}}}'),
            ("/api/secrets", f'{{"name": "deep", "value": {deep}}}'),
        ):
            answer = await api.client.post(
                url, content=body, headers={"content-type": "application/json"}
            )
            assert answer.status_code == 422, answer.text
    await assert_listings_work(api, "deep")


async def test_other_json_bodies_refuse_unstorable_text(api: Api) -> None:
    for url, body, field in (
        ("/api/secrets", {"name": "s\ud800", "value": "v"}, "body.name"),
        ("/api/secrets", {"name": "s", "value": "v", "description": "\x00"}, "body.description"),
        ("/api/users", {"name": "u\udc00", "email": "u@example.com"}, "body.name"),
        ("/api/groups", {"name": "g", "description": "\ud800"}, "body.description"),
    ):
        answer = await send(api, "POST", url, body)
        assert answer.status_code == 422, answer.text
        assert fields(answer) == [field], answer.text
    listed = await api.client.get("/api/secrets")
    assert listed.status_code == 200 and listed.json()["secrets"] == []


async def test_a_refused_apply_leaves_an_existing_recipe_as_it_was(api: Api) -> None:
    first = await send(api, "PUT", "/api/recipes", job("keep", "echo one"))
    assert first.status_code == 201
    again = await send(api, "PUT", "/api/recipes", job("keep", "echo \ud800"))
    assert again.status_code == 422
    changed_badly = await send(
        api, "PUT", "/api/recipes", job("keep", "true", schedule="0 0 30 2 *")
    )
    assert changed_badly.status_code == 422
    kept = (await api.client.get("/api/recipes/job/keep")).json()
    assert kept["spec"]["command"] == "echo one" and kept["state"]["version"] == 1
    versions = (await api.client.get("/api/recipes/job/keep/versions")).json()["versions"]
    assert len(versions) == 1


def test_the_recipe_file_reader_refuses_deep_nesting() -> None:
    # `- - - … x`: a block sequence per level, which PyYAML reaches quickly.
    for text in ("spec:\n  tags:\n    " + "- " * 5000 + "x", "a: [1"):
        with pytest.raises(InvalidRecipe) as refused:
            load_documents(text)
        assert refused.value.problems[0].path == "<document>"


@pytest.mark.parametrize(("depth", "says"), [(5000, "nested too deeply"), (100, "deeper than 64")])
def test_flo_apply_of_a_deeply_nested_file_is_one_line(
    tmp_path: Path, depth: int, says: str
) -> None:
    recipe = tmp_path / "deep.yaml"
    nested = "- " * depth + "x"
    recipe.write_text(f"type: job\nspec:\n  name: deep\n  command: 'true'\n  tags:\n    {nested}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    env.update({"FLOTILLA_URL": "http://127.0.0.1:9", "FLOTILLA_TOKEN": "flo_unused"})
    result = subprocess.run(
        ["flo", "apply", str(recipe)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
