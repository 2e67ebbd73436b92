"""A failed run's retry waits out a back-off (`reconcilers/supervision.py`): the
wait doubles per retry up to a cap, is said in the run's reason, is kept in the
run's row (so a restart keeps it), and the scheduler does not place the run
before it is over."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from flotilla.server.db.models import RunModel
from flotilla.server.reconcilers.supervision import RETRY_BACKOFF_MAX, retry_backoff
from tests.conftest import Api, make_settings, open_api
from tests.factories import apply_and_start, get_run, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(60)
BACKOFF = 1.5


def test_the_wait_doubles_up_to_the_cap() -> None:
    assert [retry_backoff(10, n) for n in (1, 2, 3)] == [10, 20, 40]
    assert retry_backoff(10, 20) == RETRY_BACKOFF_MAX


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    async for item in open_api(make_settings(data_dir, retry_backoff_seconds=BACKOFF)):
        yield item


async def test_a_retry_waits_before_it_is_placed(api: Api) -> None:
    _, run_id = await apply_and_start(api.client, job("flaky", "exit 3", retries=1))

    async def retrying() -> dict[str, Any] | None:
        run = await get_run(api.client, run_id)
        return run if run["attempt"] == 1 else None

    run = await wait_for(retrying, 20, interval=0.02, what="the retry")
    assert run["status"] == "pending", run
    assert f"retry 1 of 1 in {BACKOFF:g} s after:" in str(run["reason"]), run
    async with api.ctx.sessions() as session:
        row = await session.get(RunModel, run_id)
        assert row is not None and row.not_before is not None  # kept for a restart
        not_before = row.not_before
    ended = max(datetime.fromisoformat(t["finished_at"]) for t in run["tasks"] if t["attempt"] == 0)
    assert not_before >= ended + timedelta(seconds=BACKOFF - 0.01), (not_before, ended)
    # Not placed while it waits: its new attempt's task has no node yet.
    assert all(t["node"] is None for t in run["tasks"] if t["attempt"] == 1), run
    done = await wait_run(api.client, run_id, "failed", timeout=30)
    (task,) = [t for t in done["tasks"] if t["attempt"] == 1]
    assert datetime.fromisoformat(task["started_at"]) >= not_before, (task, not_before)
