"""Cron: ticks start runs on time, missed ticks are not replayed, and the
concurrency policy is honoured. Time is a FakeClock moved by the test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from flotilla.clock import FakeClock
from flotilla.core.cron import decide_tick, next_tick
from flotilla.server.db.models import EventModel
from flotilla.server.reconcilers.cron import Cron
from tests.conftest import Api, make_settings, open_api
from tests.factories import add_usage, job, wait_for, wait_run

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC)


def test_next_tick_and_missed_ticks_collapse() -> None:
    assert next_tick("*/5 * * * *", T0) == datetime(2026, 11, 1, 12, 5, tzinfo=UTC)
    assert next_tick("@every 90s", T0) == datetime(2026, 11, 1, 12, 1, 30, tzinfo=UTC)
    due = datetime(2026, 11, 1, 12, 5, tzinfo=UTC)
    later = datetime(2026, 11, 1, 14, 2, tzinfo=UTC)  # the server was down ~2 hours
    decision = decide_tick("*/5 * * * *", due, later)
    assert decision.fire and decision.missed == 23
    assert decision.next_at == datetime(2026, 11, 1, 14, 5, tzinfo=UTC)
    assert not decide_tick("*/5 * * * *", due, T0).fire


@pytest.fixture
async def cron_api(
    data_dir: Path, database_url: str | None
) -> AsyncIterator[tuple[Api, FakeClock]]:
    clock = FakeClock(T0)
    async for api in open_api(make_settings(data_dir, database_url), clock=clock):
        yield api, clock


async def _tick(api: Api) -> None:
    await Cron(api.ctx).step()


async def _runs(api: Api, job_id: str) -> list[dict[str, object]]:
    return list((await api.client.get(f"/api/jobs/{job_id}/runs")).json()["runs"])


async def _wait_runs(api: Api, job_id: str, count: int) -> list[dict[str, object]]:
    """The app's own cron loop may fire a tick a moment before the test's explicit
    step does; either way exactly `count` runs must appear."""

    async def enough() -> list[dict[str, object]] | None:
        runs = await _runs(api, job_id)
        assert len(runs) <= count, runs
        return runs if len(runs) == count else None

    result: list[dict[str, object]] = await wait_for(enough, what=f"{count} runs")
    return result


async def test_schedule_fires_once_per_tick_without_burst(cron_api: tuple[Api, FakeClock]) -> None:
    api, clock = cron_api
    applied = (
        await api.client.put("/api/recipes", json=job("tick", "true", schedule="*/5 * * * *"))
    ).json()
    job_id = applied["state"]["id"]
    assert applied["state"]["scheduled"] and applied["state"]["next_scheduled_at"].startswith(
        "2026-11-01T12:05"
    )
    await _tick(api)
    assert await _runs(api, job_id) == []
    clock.advance(5 * 60)
    await _tick(api)
    await _tick(api)  # the same tick is not fired twice
    runs = await _wait_runs(api, job_id, 1)
    assert runs[0]["trigger"] == "cron"
    await wait_run(api.client, str(runs[0]["id"]), "succeeded")
    clock.advance(3 * 3600)  # down for three hours: one run, not 36
    await _tick(api)
    await _wait_runs(api, job_id, 2)
    state = (await api.client.get("/api/recipes/job/tick")).json()["state"]
    assert state["next_scheduled_at"].startswith("2026-11-01T15:10")


async def test_forbid_skips_while_running_and_replace_stops(
    cron_api: tuple[Api, FakeClock],
) -> None:
    api, clock = cron_api
    forbid = (
        await api.client.put(
            "/api/recipes",
            json=job("forbid", "sleep 60", schedule="* * * * *", concurrency_policy="Forbid"),
        )
    ).json()["state"]["id"]
    replace = (
        await api.client.put(
            "/api/recipes",
            json=job("replace", "sleep 60", schedule="* * * * *", concurrency_policy="Replace"),
        )
    ).json()["state"]["id"]
    clock.advance(60)
    await _tick(api)
    first_replace = (await _wait_runs(api, replace, 1))[0]
    await wait_run(api.client, str(first_replace["id"]), "running")
    clock.advance(60)
    await _tick(api)
    await _wait_runs(api, replace, 2)
    assert len(await _runs(api, forbid)) == 1
    stopped = await wait_run(api.client, str(first_replace["id"]), "stopped")
    assert "replaced" in stopped["stop_reason"]


async def test_schedule_unschedule_and_patch_like_sc(cron_api: tuple[Api, FakeClock]) -> None:
    api, clock = cron_api
    job_id = (await api.client.put("/api/recipes", json=job("later", "true"))).json()["state"]["id"]
    refused = await api.client.post(f"/api/jobs/{job_id}/schedule")
    assert refused.status_code == 400 and "no schedule" in refused.json()["message"]
    patched = await api.client.patch(
        f"/api/jobs/{job_id}", json={"cron_schedule_options": {"schedule": "0 * * * *"}}
    )
    assert patched.status_code == 200 and patched.json()["spec"]["schedule"] == "0 * * * *"
    bad = await api.client.patch(
        f"/api/jobs/{job_id}", json={"cron_schedule_options": {"schedule": "bogus"}}
    )
    assert bad.status_code == 422
    scheduled = (await api.client.post(f"/api/jobs/{job_id}/schedule")).json()
    assert scheduled["state"]["scheduled"]
    unscheduled = (await api.client.post(f"/api/jobs/{job_id}/unschedule")).json()
    assert not unscheduled["state"]["scheduled"]
    clock.advance(2 * 3600)
    await _tick(api)
    assert await _runs(api, job_id) == []


async def test_a_spent_budget_skips_the_tick_with_the_reason(
    cron_api: tuple[Api, FakeClock],
) -> None:
    api, clock = cron_api
    budget = await api.client.put("/api/budgets/user/admin", json={"dollars_per_month": 10})
    assert budget.status_code == 200, budget.text
    now = clock.now()
    await add_usage(
        api.ctx, user="admin", started_at=now - timedelta(hours=1), ended_at=now, price_per_hour=20
    )
    applied = await api.client.put(
        "/api/recipes", json=job("nightly", "true", schedule="*/5 * * * *")
    )
    job_id = applied.json()["state"]["id"]
    clock.advance(300)
    await _tick(api)
    assert await _runs(api, job_id) == []
    async with api.ctx.sessions() as session:
        query = select(EventModel.message).where(EventModel.recipe_id == job_id)
        messages = list((await session.execute(query)).scalars())
    assert any(
        m.startswith("tick skipped: user admin has used $20.00 of its $10.00") for m in messages
    ), messages
