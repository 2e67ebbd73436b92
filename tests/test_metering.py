"""Usage reports, visibility and `/metrics` on both stores, from usage rows put
straight in the store (the end-to-end metering of real runs is in
tests/test_metering_sim.py)."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, select

from flotilla.core.metering import cents
from flotilla.server.db.models import NodeModel, UsageModel
from flotilla.server.reconcilers.metering import Metering
from flotilla.server.services.metering.usage_rows import meter_idle_nodes
from tests.conftest import Api
from tests.factories import add_usage, add_user, apply_and_start, fleet_row, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(60)

H100 = "h100-80gb-sxm-ib.8x"
# Two days at the start of a past month: stable whatever today is.
DAY1 = datetime(2026, 10, 6, tzinfo=UTC)
DAY2 = DAY1 + timedelta(days=1)
WINDOW = {"since": "2026-10-01", "until": "2026-11-01"}


def hour(n: float) -> timedelta:
    return timedelta(hours=n)


async def seed(api: Api) -> dict[str, float]:
    """alice (vision, on demand, across midnight), bob (nlp, spot, group ml), carol
    (no project). Returns each user's expected cost, unrounded."""
    ctx = api.ctx
    # 23:00 -> 01:00: an hour on each day; 8 GPUs at $31.20/h.
    await add_usage(
        ctx, user="alice", project="vision", started_at=DAY2 - hour(1), ended_at=DAY2 + hour(1)
    )
    # Half an hour at a quarter node of a spot H100: 2 GPUs, $12.80/h x 0.25.
    await add_usage(
        ctx,
        user="bob",
        owner="ml",
        owner_kind="group",
        project="nlp",
        started_at=DAY1 + hour(3),
        ended_at=DAY1 + hour(3.5),
        gpus=2,
        share=0.25,
        price_per_hour=3.2,
        spot=True,
    )
    # 10.2 s bills 11 s, on a 1-GPU L40S at $1.10/h.
    await add_usage(
        ctx,
        user="carol",
        started_at=DAY2 + hour(2),
        ended_at=DAY2 + hour(2) + timedelta(seconds=10.2),
        instance_type="l40s-48gb.1x",
        gpus=1,
        price_per_hour=1.10,
    )
    return {"alice": 2 * 31.2, "bob": 0.5 * 3.2, "carol": 11 * 1.10 / 3600}


async def usage(api: Api, headers: Any = None, **params: str) -> Any:
    response = await api.client.get("/api/usage", params={**WINDOW, **params}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def test_reports_group_by_every_key_and_agree_on_the_total(api: Api) -> None:
    expected = await seed(api)
    grand = cents(sum(expected.values()))

    by_user = await usage(api, by="user")
    rows = {r["user"]: r for r in by_user["rows"]}
    assert {u: rows[u]["cost"] for u in rows} == {u: cents(c) for u, c in expected.items()}
    assert rows["alice"]["gpu_hours"] == 16.0 and rows["alice"]["node_hours"] == 2.0
    assert rows["bob"]["spot_cost"] == 1.6 and rows["bob"]["on_demand_cost"] == 0.0
    assert rows["carol"]["gpu_seconds"] == 11.0  # the ceil rule
    assert by_user["total"]["cost"] == grand
    assert by_user["total"]["runs"] == 3

    by_group = await usage(api, by="group")
    groups = {r["group"]: r["cost"] for r in by_group["rows"]}
    assert groups == {"ml": 1.6, None: cents(expected["alice"] + expected["carol"])}

    by_project_day = await usage(api, by="project,day")
    cells = {(r["project"], r["day"]): r["cost"] for r in by_project_day["rows"]}
    assert cells == {
        ("vision", "2026-10-06"): 31.2,
        ("vision", "2026-10-07"): 31.2,
        ("nlp", "2026-10-06"): 1.6,
        (None, "2026-10-07"): cents(expected["carol"]),
    }
    by_resource = await usage(api, by="resource")
    assert {r["instance_type"] for r in by_resource["rows"]} == {H100, "l40s-48gb.1x"}
    for report in (by_group, by_project_day, by_resource):
        assert report["total"] == by_user["total"]


async def test_csv_rows_sum_to_the_json_total(api: Api) -> None:
    await seed(api)
    response = await api.client.get(
        "/api/usage", params={**WINDOW, "by": "user,day", "format": "csv"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0])[:2] == ["user", "day"]
    total = (await usage(api, by="user"))["total"]
    assert sum(float(r["gpu_seconds"]) for r in rows) == total["gpu_seconds"]
    assert sum(float(r["cost"]) for r in rows) == pytest.approx(total["cost"], abs=0.011)
    assert {(r["user"], r["day"]) for r in rows} == {
        ("alice", "2026-10-06"),
        ("alice", "2026-10-07"),
        ("bob", "2026-10-06"),
        ("carol", "2026-10-07"),
    }


async def test_windows_clip_usage_and_default_to_this_month(api: Api) -> None:
    await seed(api)
    # Only the first day: alice's first hour and bob's half hour.
    day = await usage(api, by="user", since="2026-10-06", until="2026-10-07")
    assert {r["user"]: r["cost"] for r in day["rows"]} == {"alice": 31.2, "bob": 1.6}
    # Times work too: the first 30 minutes of alice's run.
    half = await usage(api, by="user", since="2026-10-06T23:00:00Z", until="2026-10-06T23:30:00")
    assert half["total"]["cost"] == 15.6
    # No window: this month, where nothing ran.
    now = datetime.now(UTC)
    await add_usage(api.ctx, user="dan", started_at=now - timedelta(seconds=60), ended_at=now)
    this_month = (await api.client.get("/api/usage")).json()
    assert [r["user"] for r in this_month["rows"]] == ["dan"]
    assert this_month["since"].startswith(now.strftime("%Y-%m-01T00:00:00"))


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"by": "colour"}, 422),
        ({"by": "user,user"}, 422),
        ({"since": "yesterday"}, 422),
        ({"since": "2026-10-05", "until": "2026-10-01"}, 400),
        ({"format": "xml"}, 422),
    ],
)
async def test_bad_report_parameters_are_4xx(api: Api, params: dict[str, str], status: int) -> None:
    response = await api.client.get("/api/usage", params=params)
    assert response.status_code == status, response.text
    assert response.json()["message"]


async def test_members_see_their_own_their_groups_and_their_projects_usage(api: Api) -> None:
    await seed(api)
    await add_usage(
        api.ctx, user="erin", project="secret", started_at=DAY1, ended_at=DAY1 + hour(1)
    )
    alice = await add_user(api.ctx, "alice")
    seen = await usage(api, alice, by="user")
    assert [r["user"] for r in seen["rows"]] == ["alice"]
    assert seen["total"]["cost"] == 62.4
    # A viewer of nlp sees bob's nlp usage; a member of ml sees the group's.
    nlp_viewer = await add_user(api.ctx, "vic", projects={"nlp": "viewer"})
    assert [r["user"] for r in (await usage(api, nlp_viewer, by="user"))["rows"]] == ["bob"]
    ml_member = await add_user(api.ctx, "mo", groups=["ml"])
    assert [r["group"] for r in (await usage(api, ml_member, by="group"))["rows"]] == ["ml"]
    nobody = await add_user(api.ctx, "nobody")
    assert (await usage(api, nobody, by="user"))["rows"] == []
    # The admin sees every user.
    assert len((await usage(api, by="user"))["rows"]) == 4


async def test_saturn_daily_usage_shape_and_member_filter(api: Api) -> None:
    expected = await seed(api)
    params = {"start": "2026-10-01T00:00:00+00:00", "end": "2026-11-01T00:00:00+00:00"}
    org = await api.client.get("/api/orgs/default/usage/daily", params=params)
    assert org.status_code == 200, org.text
    rows = org.json()["usage"]
    assert {"date", "user", "owner", "project", "instance_type", "gpu_hours", "cost"} <= set(
        rows[0]
    )
    assert sum(r["cost"] for r in rows if r["user"] == "alice") == cents(expected["alice"])
    assert {r["owner"] for r in rows if r["user"] == "bob"} == {"ml"}

    await add_user(api.ctx, "alice")
    member = await api.client.get("/api/orgs/default/members/alice/usage/daily", params=params)
    assert [(r["date"], r["cost"]) for r in member.json()["usage"]] == [
        ("2026-10-06", 31.2),
        ("2026-10-07", 31.2),
    ]
    assert (await api.client.get("/api/orgs/acme/usage/daily")).status_code == 404
    missing = await api.client.get("/api/orgs/default/members/nobody/usage/daily")
    assert missing.status_code == 404


class LoadBalancerCollector:
    """What another component would register on `ctx.metrics_collectors`."""

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily("flotilla_lb_backends", "healthy backends", labels=["route"])
        family.add_metric(["chat"], 3)
        return [family]


async def test_metrics_are_admin_only_and_expose_usage_and_budgets(api: Api) -> None:
    expected = await seed(api)
    member = await add_user(api.ctx, "alice")
    budget = await api.client.put("/api/budgets/user/alice", json={"dollars_per_month": 100})
    assert budget.status_code == 200, budget.text
    assert (await api.client.get("/metrics", headers={"Authorization": ""})).status_code == 401
    assert (await api.client.get("/metrics", headers=member)).status_code == 403
    response = await api.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    costs = {
        (s.labels["user"], s.labels["spot"]): s.value
        for s in families["flotilla_usage_cost_dollars"].samples
        if s.name.endswith("_total")
    }
    assert costs["alice", "false"] == pytest.approx(expected["alice"])
    assert costs["bob", "true"] == pytest.approx(expected["bob"])
    gpu = {
        s.labels["user"]: s.value
        for s in families["flotilla_usage_gpu_seconds"].samples
        if s.name.endswith("_total")
    }
    assert gpu == {"alice": 16 * 3600, "bob": 2 * 1800, "carol": 11}
    assert "flotilla_usage_node_seconds" in families
    assert "flotilla_running_gpus" in families
    ratio = families["flotilla_budget_usage_ratio"].samples
    assert [(s.labels["scope_name"], s.labels["limit"], s.value) for s in ratio] == [
        ("alice", "dollars_per_month", 0.0)  # alice's use was last month
    ]
    assert "/metrics" not in (await api.client.get("/openapi.json")).json()["paths"]

    # Public for scrapers when configured; extra collectors join the same page.
    api.ctx.metrics_public = True
    api.ctx.metrics_collectors.append(LoadBalancerCollector())
    public = await api.client.get("/metrics", headers={"Authorization": ""})
    assert public.status_code == 200
    assert 'flotilla_lb_backends{route="chat"} 3.0' in public.text


async def test_metering_rebuilds_rows_a_crash_lost_and_tolerates_two_servers(api: Api) -> None:
    _, run_id = await apply_and_start(api.client, job("quick", "sleep 0.3"))
    run = await wait_run(api.client, run_id, "succeeded", "failed")
    assert run["status"] == "succeeded", run

    async def closed() -> Any:
        cost = (await api.client.get(f"/api/usage/runs/{run_id}")).json()
        return cost if cost["tasks"] and cost["tasks"][0]["ended_at"] else None

    first = (await wait_for(closed, what="the run's usage row"))["tasks"][0]
    task = run["tasks"][0]
    assert (first["started_at"], first["ended_at"]) == (task["started_at"], task["finished_at"])
    assert first["instance_type"] == "local" and first["price_per_hour"] == 0.0
    assert first["gpus"] == 0 and 0 < first["share"] <= 1  # one core of this machine

    # As if the server had crashed before metering: the row is lost; and an open
    # row outlived its task.
    async with api.ctx.transaction() as session:
        await session.execute(delete(UsageModel))
    now = api.ctx.clock.now()
    await add_usage(api.ctx, user="ghost", started_at=now - timedelta(seconds=5), ended_at=None)
    # Two servers metering at once write one row per task, without errors.
    await asyncio.gather(Metering(api.ctx).drain(), Metering(api.ctx).drain())
    async with api.ctx.sessions() as session:
        rows = (await session.execute(select(UsageModel))).scalars().all()
    by_user = {r.user: r for r in rows}
    assert sorted(by_user) == ["admin", "ghost"] and len(rows) == 2
    assert by_user["admin"].ended_at == datetime.fromisoformat(task["finished_at"])
    ghost_end = by_user["ghost"].ended_at
    assert ghost_end is not None and ghost_end >= now


async def test_idle_time_of_fleet_nodes_fills_every_gap_between_tasks(api: Api) -> None:
    """Idle rows tile what task rows leave of a node's life, including a gap that
    opened and closed between two metering steps, and overlapping tasks."""
    t0 = api.ctx.clock.now() - timedelta(hours=1)

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    async with api.ctx.transaction() as session:
        fleet = fleet_row("pool", t0)
        session.add(fleet)
        for name, terminated in (("gone", at(100)), ("up", None)):
            session.add(
                NodeModel(
                    id=uuid.uuid4().hex, name=name, fleet_id=fleet.id, provider="sim",
                    instance_type="h100-80gb-sxm-ib.8x", region="us-east1",
                    state="terminated" if terminated else "ready", address="10.0.0.1",
                    gpus=[{"index": i, "healthy": True} for i in range(8)], cpus=64,
                    price_per_hour=31.2, created_at=t0, terminated_at=terminated,
                )
            )  # fmt: skip
        for node, start, end in (
            ("gone", 10, 20), ("gone", 21, 30), ("gone", 25, 40), ("up", 5, 50)
        ):  # fmt: skip
            session.add(_task_row(node, at(start), at(end)))
    for _ in range(2):  # a second step changes nothing
        async with api.ctx.transaction() as session:
            await meter_idle_nodes(session, at(200))
    assert await _idle(api, "gone") == [(at(0), at(10)), (at(20), at(21)), (at(40), at(100))]
    # The live node is idle from its last task on: the row stays open.
    assert await _idle(api, "up") == [(at(0), at(5)), (at(50), None)]


def _task_row(node: str, start: datetime, end: datetime) -> UsageModel:
    return UsageModel(
        task_id=uuid.uuid4().hex, run_id=uuid.uuid4().hex, recipe_type="job",
        recipe_name="train", user="alice", owner="alice", owner_kind="user", project=None,
        node=node, instance_type="h100-80gb-sxm-ib.8x", gpu_type="H100", gpus=8,
        spot=False, share=1.0, price_per_hour=31.2, started_at=start, ended_at=end,
    )  # fmt: skip


async def _idle(api: Api, node: str) -> list[tuple[datetime, datetime | None]]:
    async with api.ctx.sessions() as session:
        rows = (
            await session.execute(
                select(UsageModel)
                .where(UsageModel.node == node, UsageModel.user == "idle:pool")
                .order_by(UsageModel.started_at)
            )
        ).scalars()
        return [(r.started_at, r.ended_at) for r in rows]
