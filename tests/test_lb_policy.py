"""The load balancers' network policy: a non-admin's load balancer may not route to
the server's loopback services, link-local (metadata) or unspecified addresses, nor
to a port the server itself listens on, and may not listen on every interface —
unless a platform admin's policy allows it; an admin's own may. A policy tightened
later stops the listeners it now refuses. Deployments' own load balancers (their
replicas are on this machine's loopback) keep working for anyone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flotilla.api.load_balancers import LoadBalancerPolicy
from flotilla.lb.testing import TagBackend, free_port, greet
from flotilla.server.db.models import EventModel, RecipeModel
from flotilla.server.services.serving.lb_policy import listen_refusal
from tests.conftest import Api
from tests.factories import TASK_PYTHON, add_user, wait_for

pytestmark = pytest.mark.timeout(90)
SERVER = Path(__file__).resolve().parents[1] / "examples" / "http_replica.py"


def lb(name: str, port: int, backends: list[str], host: str | None = "127.0.0.1") -> dict[str, Any]:
    listener: dict[str, Any] = {"port": port, "backends": backends}
    if host is not None:
        listener["host"] = host
    listener["health_check"] = {"interval": 0.2, "timeout": 0.5}
    return {"type": "load_balancer", "spec": {"name": name, "listeners": [listener]}}


@pytest.fixture
async def service() -> AsyncIterator[TagBackend]:
    """A loopback-only service of this machine (the role PostgreSQL played)."""
    backend = await TagBackend("secret").start()
    yield backend
    await backend.stop()


async def serving(port: int) -> str | None:
    try:
        return await greet(port)
    except OSError:
        return None


async def refused_fields(response: httpx.Response) -> list[str]:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error_code"] == "lb_policy"
    return [e["field"] for e in body["errors"]]


async def test_a_users_load_balancer_cannot_reach_the_servers_loopback_services(
    api: Api, service: TagBackend
) -> None:
    bob = await add_user(api.ctx, "bob")
    port = free_port()
    applied = await api.client.put(
        "/api/recipes", json=lb("to-pg", port, [f"127.0.0.1:{service.port}"]), headers=bob
    )
    assert await refused_fields(applied) == ["spec.listeners[0].backends[0]"]
    assert "loopback" in applied.json()["message"]
    # Nothing was stored, and nothing listens.
    assert (await api.client.get("/api/load_balancers/to-pg", headers=bob)).status_code == 404
    assert await serving(port) is None
    # Every other way to the same places, and listening on every interface.
    for backend in (
        "0.0.0.0:5432",
        "169.254.169.254:80",
        "[::1]:5432",
        "[::ffff:127.0.0.1]:5432",
        "[fd00:ec2::254]:80",
        "[fe80::1]:80",
        "224.0.0.1:80",
    ):
        response = await api.client.put(
            "/api/recipes", json=lb("to-pg", port, [backend]), headers=bob
        )
        assert await refused_fields(response) == ["spec.listeners[0].backends[0]"], backend
    for host in ("0.0.0.0", "::"):
        response = await api.client.put(
            "/api/recipes", json=lb("wide", port, [], host=host), headers=bob
        )
        assert await refused_fields(response) == ["spec.listeners[0].host"], host
    # An ordinary user may not widen the policy.
    widened = {"allowed_backend_cidrs": ["127.0.0.0/8"]}
    response = await api.client.put("/api/load_balancers/policy", json=widened, headers=bob)
    assert response.status_code == 403


async def test_admins_may_and_the_policy_can_allow_it_until_tightened_again(
    api: Api, service: TagBackend
) -> None:
    # The platform admin's own load balancer is not limited.
    port = free_port()
    recipe = lb("admin-lb", port, [f"127.0.0.1:{service.port}"])
    assert (await api.client.put("/api/recipes", json=recipe)).status_code == 201
    assert await wait_for(lambda: serving(port), what="the admin's listener") == "secret"

    bob = await add_user(api.ctx, "bob")
    bob_port = free_port()
    recipe = lb("to-pg", bob_port, [f"127.0.0.1:{service.port}"])
    assert (await api.client.put("/api/recipes", json=recipe, headers=bob)).status_code == 403
    policy = {"allowed_backend_cidrs": ["127.0.0.1/32"]}
    response = await api.client.put("/api/load_balancers/policy", json=policy)
    assert response.status_code == 200, response.text
    shown = (await api.client.get("/api/load_balancers/policy", headers=bob)).json()
    assert shown["allowed_backend_cidrs"] == ["127.0.0.1/32"]
    assert shown["allow_wildcard_listen"] is False
    assert (await api.client.put("/api/recipes", json=recipe, headers=bob)).status_code == 201
    assert await wait_for(lambda: serving(bob_port), what="bob's listener") == "secret"

    # The server's own ports stay refused whatever the policy: the API, and another
    # load balancer (which would skip its own allow-list).
    for own in (api.ctx.settings.port, port):
        other = lb("to-own", free_port(), [f"127.0.0.1:{own}"])
        response = await api.client.put("/api/recipes", json=other, headers=bob)
        assert await refused_fields(response) == ["spec.listeners[0].backends[0]"]

    # Tightened again: bob's listener stops, with an event saying why; the admin's stays.
    assert (await api.client.put("/api/load_balancers/policy", json={})).status_code == 200

    async def stopped() -> bool:
        return await serving(bob_port) is None

    assert await wait_for(stopped, what="bob's listener to stop")
    assert await serving(port) == "secret"

    async def said_why() -> bool:  # the event may commit just after the listener stops
        async with api.ctx.sessions() as session:
            query = select(RecipeModel.id).where(RecipeModel.name == "to-pg")
            recipe_id = (await session.execute(query)).scalar_one()
            events = select(EventModel.message).where(EventModel.recipe_id == recipe_id)
            messages = (await session.execute(events)).scalars().all()
        return any("refused by the load balancer policy" in m and "loopback" in m for m in messages)

    assert await wait_for(said_why, what="the event saying why bob's listener stopped")


def test_listen_addresses_of_non_admins() -> None:
    closed, wide = LoadBalancerPolicy(), LoadBalancerPolicy(allow_wildcard_listen=True)
    assert listen_refusal(None, closed, "127.0.0.1") is None  # the server's, by default
    assert listen_refusal("127.0.0.2", closed, "127.0.0.1") is None
    assert listen_refusal("0.0.0.0", closed, "127.0.0.1")
    assert listen_refusal("0.0.0.0", wide, "127.0.0.1") is None
    assert listen_refusal("10.0.0.5", closed, "127.0.0.1")
    allowed = LoadBalancerPolicy(allowed_listen_cidrs=["10.0.0.0/8"])
    assert listen_refusal("10.0.0.5", allowed, "127.0.0.1") is None
    assert listen_refusal("0.0.0.0", closed, "0.0.0.0") is None  # the admin chose it


async def test_a_users_deployment_still_serves_through_its_load_balancer(api: Api) -> None:
    """Its replicas are on this machine's loopback: the reconciler routes to them."""
    bob = await add_user(api.ctx, "bob")
    recipe = {
        "type": "deployment",
        "spec": {"name": "web", "command": f"{TASK_PYTHON} {SERVER}"},
    }
    assert (await api.client.put("/api/recipes", json=recipe, headers=bob)).status_code == 201

    async def answered() -> int | None:
        view = (await api.client.get("/api/deployments/web", headers=bob)).json()
        port = view["route_ports"].get("8000")
        if not port or not any(r["ready"] for r in view["replicas"]):
            return None
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                return (await client.get(f"http://127.0.0.1:{port}/")).status_code
        except httpx.HTTPError:
            return None

    assert await wait_for(answered, timeout=60, what="the deployment's port") == 200
