"""One user's bad object stops no reconciler for anyone: a load balancer, a
deployment, a scheduled job or a queued run whose stored spec is corrupted (as an
older row the recipe no longer accepts would be) gets an error event and backs
off, and every other object goes on — new load balancers start, deleted ones stop,
other deployments get replicas, other ticks fire, other runs start. Also: whatever
apply stores validates again as the reconcilers read it (every example in
examples/ and in the README), and apply refuses what a reconciler could not use."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select, update

from flotilla.clock import FakeClock
from flotilla.config import Settings
from flotilla.lb.testing import TagBackend, free_port, greet
from flotilla.recipes import parse_recipe
from flotilla.server.changes import Change
from flotilla.server.db.models import (
    DeploymentStateModel,
    EventModel,
    RecipeModel,
    RunModel,
)
from flotilla.server.reconcilers.cron import Cron
from flotilla.server.reconcilers.isolation import Quarantine
from flotilla.server.services.runs.runs import create_run
from flotilla.server.services.serving.deployments import balancer_config, spec_of
from flotilla.server.services.serving.load_balancers import config_of
from tests.conftest import Api, make_settings, open_api
from tests.factories import TASK_PYTHON, apply_and_start, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(90)
ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "examples" / "http_replica.py"


async def corrupt(api: Api, name: str, change: dict[str, Any]) -> str:
    """Overwrite a recipe's stored spec behind the API's back; returns its id."""
    async with api.ctx.transaction() as session:
        recipe = (
            await session.execute(select(RecipeModel).where(RecipeModel.name == name))
        ).scalar_one()
        await session.execute(
            update(RecipeModel)
            .where(RecipeModel.id == recipe.id)
            .values(spec={**recipe.spec, **change})
        )
        return recipe.id


async def error_events(api: Api, **where: str) -> list[str]:
    async with api.ctx.sessions() as session:
        query = select(EventModel.message).where(EventModel.kind == "error")
        for column, value in where.items():
            query = query.where(getattr(EventModel, column) == value)
        return list((await session.execute(query)).scalars().all())


async def serving(port: int) -> str | None:
    try:
        return await greet(port)
    except OSError:
        return None


@pytest.fixture
async def backend() -> AsyncIterator[TagBackend]:
    started = await TagBackend("b").start()
    yield started
    await started.stop()


def lb(name: str, port: int, backend: TagBackend, **listener: Any) -> dict[str, Any]:
    spec = {"port": port, "backends": [f"127.0.0.1:{backend.port}"], **listener}
    return {"type": "load_balancer", "spec": {"name": name, "listeners": [spec]}}


async def test_a_corrupt_load_balancer_fails_alone(api: Api, backend: TagBackend) -> None:
    # The README's form, without `host`: stored as null, it must serve.
    plain, doomed, late = free_port(), free_port(), free_port()
    for name, port in (("plain", plain), ("doomed", doomed)):
        assert (
            await api.client.put("/api/recipes", json=lb(name, port, backend))
        ).status_code == 201
    for port in (plain, doomed):
        assert await wait_for(lambda p=port: serving(p), what=f"port {port}") == "b"  # type: ignore[misc]
    bad_id = await corrupt(api, "plain", {"listeners": [{"port": "not a port"}]})
    # Others still start and stop.
    assert (await api.client.put("/api/recipes", json=lb("late", late, backend))).status_code == 201
    assert (await api.client.delete("/api/load_balancers/doomed")).status_code == 204
    assert await wait_for(lambda: serving(late), what="the new load balancer") == "b"

    async def doomed_closed() -> bool:
        return await serving(doomed) is None

    assert await wait_for(doomed_closed, what="the deleted load balancer to close")
    events = await wait_for(lambda: error_events(api, recipe_id=bad_id), what="an error event")
    assert "retrying in" in events[0] and "listeners" in events[0]
    assert await serving(plain) == "b"  # the corrupt one keeps what it served


async def test_apply_refuses_a_route_allow_the_load_balancer_cannot_use(api: Api) -> None:
    recipe = {
        "type": "deployment",
        "spec": {"name": "web", "command": "true", "routes": [{"allow": [""]}]},
    }
    response = await api.client.put("/api/recipes", json=recipe)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "spec.routes[0].allow"


async def test_a_corrupt_deployment_fails_alone(sqlite_api: Api) -> None:
    api = sqlite_api
    bad = {"type": "deployment", "spec": {"name": "bad", "command": "sleep 60", "scale": 0}}
    assert (await api.client.put("/api/recipes", json=bad)).status_code == 201
    bad_id = await corrupt(api, "bad", {"routes": [{"container_port": 8000, "allow": [""]}]})
    good = {
        "type": "deployment",
        "spec": {"name": "good", "command": f"{TASK_PYTHON} {SERVER}"},
    }
    assert (await api.client.put("/api/recipes", json=good)).status_code == 201

    async def ready() -> bool:
        view = (await api.client.get("/api/deployments/good")).json()
        return any(r["ready"] for r in view["replicas"])

    assert await wait_for(ready, timeout=60, what="a ready replica of the good deployment")
    events = await wait_for(lambda: error_events(api, recipe_id=bad_id), what="an error event")
    assert "allow" in events[0]
    async with api.ctx.sessions() as session:  # the failed one's changes were rolled back
        assert await session.get(DeploymentStateModel, bad_id) is None


@pytest.fixture
async def cron_api(data_dir: Path) -> AsyncIterator[tuple[Api, FakeClock]]:
    clock = FakeClock(datetime(2026, 11, 1, 12, 0, tzinfo=UTC))
    async for api in open_api(make_settings(data_dir), clock=clock):
        yield api, clock


async def test_a_corrupt_schedule_fails_alone(cron_api: tuple[Api, FakeClock]) -> None:
    api, clock = cron_api
    for name in ("bad", "good"):
        recipe = job(name, "true", schedule="*/5 * * * *")
        assert (await api.client.put("/api/recipes", json=recipe)).status_code == 201
    bad_id = await corrupt(api, "bad", {"schedule": "not a schedule"})
    clock.advance(5 * 60)
    await Cron(api.ctx).step()

    async def good_ran() -> bool:
        async with api.ctx.sessions() as session:
            query = select(RunModel.id).join(RecipeModel).where(RecipeModel.name == "good")
            return bool((await session.execute(query)).first())

    assert await wait_for(good_ran, what="the good job's tick")
    assert await wait_for(lambda: error_events(api, recipe_id=bad_id), what="an error event")


async def test_a_queued_run_with_a_corrupt_spec_fails_alone(sqlite_api: Api) -> None:
    api = sqlite_api
    assert (await api.client.put("/api/recipes", json=job("bad", "true"))).status_code == 201
    async with api.ctx.transaction() as session:
        recipe = (
            await session.execute(select(RecipeModel).where(RecipeModel.name == "bad"))
        ).scalar_one()
        spec = {**recipe.spec, "command": {"not": "a command"}}
        bad = await create_run(
            session, recipe, trigger="manual", actor="test", now=api.ctx.clock.now(), spec=spec
        )
    api.ctx.changes.announce(Change.RUNS_QUEUED)
    _, run_id = await apply_and_start(api.client, job("good", "true"))
    await wait_run(api.client, run_id, "succeeded")
    failed = await wait_run(api.client, bad.id, "error")
    assert "stored spec is invalid" in failed["reason"]


def test_a_quarantine_backs_off_with_jitter_and_lets_a_new_version_through() -> None:
    now = [0.0]
    quarantine = Quarantine("test", base=5, cap=20, clock=lambda: now[0], jitter=lambda: 1.0)
    first = quarantine.failed("a", ValueError("bad"), version=1)
    assert first.new and first.delay == 5 and quarantine.holds("a", 1)
    now[0] = 6
    assert not quarantine.holds("a", 1)
    again = quarantine.failed("a", ValueError("bad"), version=1)
    assert not again.new and again.delay == 10  # the same message: no second event
    assert quarantine.failed("a", ValueError("bad"), 1).delay == 20
    assert quarantine.failed("a", ValueError("bad"), 1).delay == 20  # capped
    assert quarantine.holds("a", 1) and not quarantine.holds("a", 2)  # a fixed recipe: at once
    assert not quarantine.holds("b")


def _readme_recipes() -> list[dict[str, Any]]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, re.S)
    found = [yaml.safe_load(block) for block in blocks]
    return [r for r in found if isinstance(r, dict) and "type" in r and "spec" in r]


def _example_recipes() -> list[dict[str, Any]]:
    out = []
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    return out


def test_every_example_and_readme_recipe_validates_again_as_stored() -> None:
    recipes = _readme_recipes() + _example_recipes()
    types = {r["type"] for r in recipes}
    assert {"load_balancer", "deployment", "job", "fleet"} <= types, types
    settings = Settings()
    for data in recipes:
        stored = parse_recipe(data).spec_dict()  # what apply stores
        again = parse_recipe({"type": data["type"], "spec": stored}).spec_dict()
        assert again == stored, data
        row = RecipeModel(id="r", type=data["type"], name=stored["name"], owner="o", spec=stored)
        if data["type"] == "load_balancer":
            config_of(row, settings)
        elif data["type"] == "deployment":
            spec = spec_of(row)
            ports = {str(r.container_port): 40000 + i for i, r in enumerate(spec.routes)}
            state = DeploymentStateModel(recipe_id="r", desired_replicas=1, route_ports=ports)
            balancer_config(row, spec, state, [], settings.host)
