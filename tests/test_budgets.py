"""Budgets on both stores: who may set and read them, and how triggering a run is
refused (403 budget_exceeded) or warned about, from usage rows put straight in the
store and runs that stay pending (no GPU node). Real runs against a budget are in
tests/test_metering_sim.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import Api
from tests.factories import add_usage, add_user, job

pytestmark = pytest.mark.timeout(60)


async def start(api: Api, headers: httpx.Headers | None, recipe: dict[str, Any]) -> httpx.Response:
    applied = await api.client.put("/api/recipes", json=recipe, headers=headers)
    assert applied.status_code in (200, 201), applied.text
    job_id = applied.json()["state"]["id"]
    return await api.client.post(f"/api/jobs/{job_id}/start", headers=headers)


async def put_budget(api: Api, kind: str, name: str, **limits: Any) -> dict[str, Any]:
    response = await api.client.put(f"/api/budgets/{kind}/{name}", json=limits)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def spent(api: Api, dollars: float, **fields: Any) -> None:
    """A finished minute of use this month costing exactly `dollars`."""
    end = api.ctx.clock.now()
    await add_usage(
        api.ctx,
        started_at=end - timedelta(seconds=60),
        ended_at=end,
        price_per_hour=dollars * 60,
        **fields,
    )


async def events(api: Api, run_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/api/runs/{run_id}/events")
    return list(response.json()["events"])


async def test_admins_set_budgets_and_people_read_those_that_apply_to_them(api: Api) -> None:
    alice = await add_user(api.ctx, "alice", projects={"vision": "member"})
    bob = await add_user(api.ctx, "bob", groups=["ml"])
    refused = await api.client.put(
        "/api/budgets/project/vision", json={"dollars_per_month": 1}, headers=alice
    )
    assert refused.status_code == 403 and refused.json()["error_code"] == "forbidden"
    unknown = await api.client.put("/api/budgets/project/nope", json={"max_gpus": 1})
    assert unknown.status_code == 422 and "no project named 'nope'" in unknown.json()["message"]
    for bad in ({"warn_fraction": 0}, {"max_gpus": -1}, {"dollars": 5}):
        response = await api.client.put("/api/budgets/user/bob", json=bad)
        assert response.status_code == 422, (bad, response.text)

    vision = await put_budget(api, "project", "vision", dollars_per_month=100, max_gpus=16)
    assert vision["warn_fraction"] == 0.8 and vision["gpu_hours_per_month"] is None
    await put_budget(api, "group", "ml", gpu_hours_per_month=500)
    await put_budget(api, "user", "bob", max_gpus=8)
    # PUT replaces: limits left out are removed.
    replaced = await put_budget(api, "user", "bob", dollars_per_month=10)
    assert (
        replaced["max_gpus"] is None
        and replaced["id"] == (await api.client.get("/api/budgets/user/bob")).json()["id"]
    )

    def scopes(response: httpx.Response) -> list[tuple[str, str]]:
        return [(b["scope_kind"], b["scope_name"]) for b in response.json()["budgets"]]

    assert scopes(await api.client.get("/api/budgets", headers=alice)) == [("project", "vision")]
    assert scopes(await api.client.get("/api/budgets", headers=bob)) == [
        ("group", "ml"),
        ("user", "bob"),
    ]
    assert len(scopes(await api.client.get("/api/budgets"))) == 3
    hidden = await api.client.get("/api/budgets/group/ml", headers=alice)
    assert hidden.status_code == 404

    status = (await api.client.get("/api/budgets/status", headers=alice)).json()["budgets"]
    assert status[0]["state"] == "ok"
    assert [(lim["limit"], lim["used"], lim["max"]) for lim in status[0]["limits"]] == [
        ("max_gpus", 0, 16),
        ("dollars_per_month", 0.0, 100),
    ]

    assert (await api.client.delete("/api/budgets/user/bob", headers=bob)).status_code == 403
    assert (await api.client.delete("/api/budgets/user/bob")).status_code == 204
    assert (await api.client.get("/api/budgets/user/bob")).status_code == 404
    assert (await api.client.delete("/api/budgets/user/bob")).status_code == 404


async def test_a_spent_budget_refuses_new_runs_and_names_itself(api: Api) -> None:
    alice = await add_user(api.ctx, "alice", projects={"vision": "member"})
    await put_budget(api, "project", "vision", dollars_per_month=100)
    await spent(api, 100.02, user="bob", project="vision")
    await spent(api, 5000, user="alice", project=None)  # not the project's: ignored

    refused = await start(api, alice, job("train", "sleep 1", project="vision"))
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["error_code"] == "budget_exceeded"
    assert body["message"].startswith(
        "project vision has used $100.02 of its $100.00 monthly budget"
    )
    runs = (await api.client.get("/api/recipes/job/train", headers=alice)).json()
    assert (await api.client.get(f"/api/jobs/{runs['state']['id']}/runs")).json()["runs"] == []

    status = (await api.client.get("/api/budgets/status", headers=alice)).json()["budgets"]
    assert status[0]["state"] == "exceeded"
    assert status[0]["limits"][0]["used"] == 100.02

    # Work outside the project is not held back by it.
    elsewhere = await start(api, alice, job("notes", "true"))
    assert elsewhere.status_code == 200, elsewhere.text
    # A raised budget lets runs start again, without a warning below 80%.
    await put_budget(api, "project", "vision", dollars_per_month=200)
    allowed = await start(api, alice, job("train", "sleep 1", project="vision"))
    assert allowed.status_code == 200, allowed.text
    kinds = [e["kind"] for e in await events(api, allowed.json()["run"]["id"])]
    assert "budget_warning" not in kinds


async def test_a_nearly_spent_budget_warns_on_the_run(api: Api) -> None:
    alice = await add_user(api.ctx, "alice")
    await put_budget(api, "user", "alice", gpu_hours_per_month=10, warn_fraction=0.5)
    end = api.ctx.clock.now()
    # 8 GPUs for 40 minutes: 5.33 of 10 GPU-hours.
    await add_usage(api.ctx, user="alice", started_at=end - timedelta(minutes=40), ended_at=end)
    started = await start(api, alice, job("tune", "true"))
    assert started.status_code == 200, started.text
    warnings = [
        e for e in await events(api, started.json()["run"]["id"]) if e["kind"] == "budget_warning"
    ]
    expected = "user alice has used 5.33 GPU-hours of its 10.00 GPU-hours monthly budget (53%)"
    assert [w["message"] for w in warnings] == [expected]
    assert started.json()["warnings"] == [expected]
    status = (await api.client.get("/api/budgets/status", headers=alice)).json()["budgets"]
    assert status[0]["state"] == "warning"


async def test_max_gpus_counts_running_and_pending_runs(api: Api) -> None:
    alice = await add_user(api.ctx, "alice")
    await put_budget(api, "user", "alice", max_gpus=8)
    big = job("big", "sleep 60", resources={"gpu": "H100:4"}, scale=2)  # 8 GPUs
    first = await start(api, alice, big)
    assert first.status_code == 200, first.text  # pending: no GPU node here
    run_id = first.json()["run"]["id"]
    assert any(e["kind"] == "budget_warning" for e in await events(api, run_id))

    second = await start(api, alice, job("small", "sleep 60", resources={"gpu": 1}))
    assert second.status_code == 403
    assert second.json()["message"] == (
        "user alice holds 8 GPUs in running and pending runs and this run needs 1 more, "
        "over its limit of 8 GPUs at once"
    )
    # Runs without GPUs hold none.
    assert (await start(api, alice, job("cpu", "true"))).status_code == 200
    status = (await api.client.get("/api/budgets/status", headers=alice)).json()["budgets"]
    assert status[0]["limits"][0]["used"] == 8 and status[0]["state"] == "warning"

    # Stopping the pending run frees its GPUs at once.
    job_id = (await api.client.get("/api/recipes/job/big", headers=alice)).json()["state"]["id"]
    assert (await api.client.post(f"/api/jobs/{job_id}/stop", headers=alice)).status_code == 200
    third = await start(api, alice, job("small", "sleep 60", resources={"gpu": 1}))
    assert third.status_code == 200, third.text


async def test_a_group_budget_applies_to_the_groups_work(api: Api) -> None:
    alice = await add_user(api.ctx, "alice", groups=["ml"])
    await put_budget(api, "group", "ml", dollars_per_month=0)
    refused = await start(api, alice, job("shared", "true", owner="ml"))
    assert refused.status_code == 403
    assert refused.json()["message"].startswith(
        "group ml has used $0.00 of its $0.00 monthly budget"
    )
    # Alice's own work is not the group's.
    assert (await start(api, alice, job("mine", "true"))).status_code == 200
