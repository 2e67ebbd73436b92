"""The load balancer resource: applied as a recipe, served by the server's own data
plane, reconfigured live, visible (backends, connections, health) through the API
and /metrics, checked for bad fields and port clashes, drained on delete."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from flotilla.lb.testing import TagBackend, free_port, greet
from flotilla.server.services.serving.load_balancers import ports_in_use
from tests.conftest import Api
from tests.factories import add_user, wait_for

pytestmark = pytest.mark.timeout(60)


def lb_recipe(name: str, port: int, backends: list[str], **listener: Any) -> dict[str, Any]:
    return {
        "type": "load_balancer",
        "spec": {
            "name": name,
            "listeners": [
                {
                    "port": port,
                    "host": "127.0.0.1",
                    "backends": backends,
                    "health_check": {"interval": 0.2, "timeout": 0.5},
                    **listener,
                }
            ],
        },
    }


@pytest.fixture
async def backends() -> AsyncIterator[list[TagBackend]]:
    started = [await TagBackend(name).start() for name in ("a", "b")]
    yield started
    for backend in started:
        await backend.stop()


async def view(api: Api, name: str) -> dict[str, Any]:
    response = await api.client.get(f"/api/load_balancers/{name}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_load_balancer_serves_reconfigures_and_reports(
    api: Api, backends: list[TagBackend]
) -> None:
    a, b = backends
    port = free_port()
    recipe = lb_recipe("web", port, [f"127.0.0.1:{a.port}"])
    applied = await api.client.put("/api/recipes", json=recipe)
    assert applied.status_code == 201, applied.text

    async def serving() -> str | None:
        try:
            return await greet(port)
        except OSError:
            return None

    assert await wait_for(serving, what="the listener") == "a"
    # Live reconfiguration: b replaces a; the listener keeps its port.
    recipe["spec"]["listeners"][0]["backends"] = [f"127.0.0.1:{b.port}"]
    assert (await api.client.put("/api/recipes", json=recipe)).status_code == 201

    async def moved() -> bool:
        return await serving() == "b"

    assert await wait_for(moved, what="traffic on b")
    state = await view(api, "web")
    assert state["status"] == "serving"
    (listener,) = state["listeners"]
    assert listener["port"] == port and listener["accepted"] >= 2
    keys = {be["key"]: be for be in listener["backends"]}
    assert keys[f"127.0.0.1:{b.port}"]["state"] == "online"
    assert keys[f"127.0.0.1:{b.port}"]["total_connections"] >= 1
    assert keys[f"127.0.0.1:{b.port}"]["health_history"]
    metrics = await api.client.get("/metrics")
    assert metrics.status_code == 200 and f'lb="web",listener="{port}"' in metrics.text

    assert (await api.client.delete("/api/load_balancers/web")).status_code == 204

    async def closed() -> bool:
        return await serving() is None

    assert await wait_for(closed, what="the listener to close")
    assert (await api.client.get("/api/load_balancers/web")).status_code == 404


async def test_bad_fields_and_taken_ports_are_refused(api: Api) -> None:
    port = free_port()
    bad = lb_recipe("bad", port, ["nowhere"], allow=["not-a-cidr"])
    response = await api.client.put("/api/recipes", json=bad)
    assert response.status_code == 422, response.text
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"spec.listeners[0].backends", "spec.listeners[0].allow"}
    first = await api.client.put("/api/recipes", json=lb_recipe("one", port, []))
    assert first.status_code == 201, first.text
    clash = await api.client.put("/api/recipes", json=lb_recipe("two", port, []))
    assert clash.status_code == 409 and "load balancer one" in clash.json()["message"]
    api_port = await api.client.put(
        "/api/recipes", json=lb_recipe("three", api.ctx.settings.port, [])
    )
    assert api_port.status_code == 409 and "Flotilla API" in api_port.json()["message"]
    async with api.ctx.sessions() as session:
        taken = await ports_in_use(session, api.ctx.settings.with_(ssh_port=2222), "")
    assert taken[2222] == "the SSH gateway"


async def test_others_cannot_see_or_delete_a_load_balancer(api: Api) -> None:
    await api.client.put("/api/recipes", json=lb_recipe("private", free_port(), []))
    eve = await add_user(api.ctx, "eve")
    assert (await api.client.get("/api/load_balancers", headers=eve)).json() == {
        "load_balancers": []
    }
    assert (await api.client.get("/api/load_balancers/private", headers=eve)).status_code == 404
    gone = await api.client.delete("/api/load_balancers/private", headers=eve)
    assert gone.status_code == 404
