"""Retention (`reconcilers/retention.py`): old events are deleted, the logs of runs
finished long ago removed and answered 410, and the rest kept, on both stores."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from flotilla.compute.base import TaskRef
from flotilla.config import Settings
from flotilla.server.db.models import EventModel, RunModel
from flotilla.server.reconcilers.retention import EVENT_BATCH, Retention
from flotilla.server.services.events import record_event
from flotilla.server.services.runs.launch import task_ref
from flotilla.server.services.runs.runs import run_tasks
from tests.conftest import Api, make_settings, open_api
from tests.factories import apply_and_start, job, wait_run


async def _finished_run(api: Api, name: str) -> str:
    _, run_id = await apply_and_start(api.client, job(name, "echo kept-output"))
    await wait_run(api.client, run_id, "succeeded")
    logs = await api.client.get(f"/api/runs/{run_id}/logs")
    assert logs.status_code == 200 and "kept-output" in logs.text
    return run_id


async def _finished_days_ago(api: Api, run_id: str, days: float) -> None:
    async with api.ctx.transaction() as session:
        when = api.ctx.clock.now() - timedelta(days=days)
        await session.execute(
            update(RunModel).where(RunModel.id == run_id).values(finished_at=when)
        )


async def _event_count(api: Api) -> int:
    async with api.ctx.sessions() as session:
        return int((await session.execute(select(func.count(EventModel.id)))).scalar_one())


async def test_logs_of_runs_finished_long_ago_are_removed_and_answered_410(api: Api) -> None:
    old = await _finished_run(api, "old")
    recent = await _finished_run(api, "recent")
    await api.stop_loops()  # this test steps retention itself
    await _finished_days_ago(api, old, 31)
    await _finished_days_ago(api, recent, 29)
    old_files = api.ctx.backend.log_files(await _task_of(api, old))
    assert old_files.main.exists()

    await Retention(api.ctx).step()

    gone = await api.client.get(f"/api/runs/{old}/logs")
    assert gone.status_code == 410, gone.text
    assert gone.json()["error_code"] == "logs_removed"
    assert "FLOTILLA_LOG_RETENTION_DAYS" in gone.json()["message"]
    assert not old_files.main.exists() and not old_files.setup.exists()
    assert (await api.client.get(f"/api/runs/{old}/logs?container=setup")).status_code == 410
    events = (await api.client.get(f"/api/runs/{old}/events")).json()["events"]
    assert any(e["kind"] == "retention" and "30 days" in e["message"] for e in events)
    # The run itself is kept, and so are a younger run's logs.
    assert (await api.client.get(f"/api/runs/{old}")).json()["status"] == "succeeded"
    kept = await api.client.get(f"/api/runs/{recent}/logs")
    assert kept.status_code == 200 and "kept-output" in kept.text

    # A second pass finds nothing more to do: no second event.
    await Retention(api.ctx).step()
    events = (await api.client.get(f"/api/runs/{old}/events")).json()["events"]
    assert sum(e["kind"] == "retention" for e in events) == 1


async def _task_of(api: Api, run_id: str) -> TaskRef:
    async with api.ctx.sessions() as session:
        return task_ref((await run_tasks(session, [run_id]))[run_id][0])


async def test_events_older_than_the_retention_are_deleted_in_batches(api: Api) -> None:
    await api.stop_loops()
    now = api.ctx.clock.now()
    old_count = EVENT_BATCH + 7  # more than a batch: the loop goes on until done
    async with api.ctx.transaction() as session:
        for i in range(old_count):
            record_event(
                session, kind="old", message=f"e{i}", actor="test", now=now - timedelta(days=91)
            )
        record_event(
            session, kind="young", message="kept", actor="test", now=now - timedelta(days=89)
        )
    before = await _event_count(api)

    await Retention(api.ctx).step()

    assert await _event_count(api) == before - old_count
    async with api.ctx.sessions() as session:
        kinds = set((await session.execute(select(EventModel.kind))).scalars())
    assert "old" not in kinds and "young" in kinds


async def test_zero_keeps_events_and_logs_forever(data_dir: Path) -> None:
    settings = make_settings(data_dir, event_retention_days=0, log_retention_days=0)
    async for api in open_api(settings):
        run_id = await _finished_run(api, "forever")
        await api.stop_loops()
        await _finished_days_ago(api, run_id, 3650)
        async with api.ctx.transaction() as session:
            record_event(
                session,
                kind="old",
                message="x",
                actor="test",
                now=api.ctx.clock.now() - timedelta(days=3650),
            )
        before = await _event_count(api)
        await Retention(api.ctx).step()
        assert await _event_count(api) == before
        assert (await api.client.get(f"/api/runs/{run_id}/logs")).status_code == 200


def test_the_settings_come_from_the_environment_and_refuse_a_negative_value(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOTILLA_EVENT_RETENTION_DAYS", "7")
    monkeypatch.setenv("FLOTILLA_LOG_RETENTION_DAYS", "0.5")
    settings = Settings.from_env()
    assert (settings.event_retention_days, settings.log_retention_days) == (7.0, 0.5)
    monkeypatch.setenv("FLOTILLA_LOG_RETENTION_DAYS", "-1")
    with pytest.raises(ValueError, match="FLOTILLA_LOG_RETENTION_DAYS must be 0"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("FLOTILLA_EVENT_RETENTION_DAYS", "a week", "must be a number, not 'a week'"),
        ("FLOTILLA_PORT", "http", "must be a whole number, not 'http'"),
        ("FLOTILLA_UID_MIN", "1e6", "must be a whole number, not '1e6'"),
        ("FLOTILLA_MAX_REQUEST_BYTES", "lots", "must be a size (e.g. 512Mi, 64Gi), not 'lots'"),
    ],
)
def test_a_setting_that_does_not_read_is_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"^{name} {re.escape(says)}$"):
        Settings.from_env()


def test_flo_server_says_which_setting_is_wrong(tmp_path: Path) -> None:
    """No traceback: the variable, what it must be, and a failed exit."""
    env = {**os.environ, "FLOTILLA_DATA_DIR": str(tmp_path), "FLOTILLA_LOG_RETENTION_DAYS": "soon"}
    done = subprocess.run(["flo", "server"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "flo server: FLOTILLA_LOG_RETENTION_DAYS must be a number, not 'soon'" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
