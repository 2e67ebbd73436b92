"""A metering step costs the work that changed, not the work in flight: with 1,000
runs running on 1,000 fleet nodes, a step after one of them finished reads that
run's rows and node, closes its usage row and opens the node's idle row (issue 14).
What is written outside the server's sessions waits for the next full step.

The running runs are inserted in bulk, as `tests/test_queue_scale.py` does;
every row a step turns into an object is counted through SQLAlchemy's `load`
event, per model."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, insert, select, update

from flotilla.server.db.models import (
    NodeModel,
    RunModel,
    TaskModel,
    UsageModel,
)
from flotilla.server.reconcilers.metering import Metering
from tests.conftest import Api
from tests.factories import fleet_row
from tests.test_queue_scale import _pending

pytestmark = pytest.mark.timeout(120)

RUNNING = 1_000
H100 = "h100-80gb-sxm-ib.8x"
MODELS = (NodeModel, RunModel, TaskModel, UsageModel)


@contextmanager
def objects_loaded() -> Iterator[Counter[str]]:
    """How many rows of each model any session turns into objects in the block."""
    seen: Counter[str] = Counter()

    def count(target: Any, _context: Any) -> None:
        seen[type(target).__name__] += 1

    for model in MODELS:
        event.listen(model, "load", count)
    try:
        yield seen
    finally:
        for model in MODELS:
            event.remove(model, "load", count)


async def _running_on_nodes(api: Api) -> list[str]:
    """RUNNING runs, each with its one task started on a node of its own in a
    priced fleet; their ids."""
    recipe_id = await _pending(api, "train", RUNNING, resources={"gpu": "H100:8"})
    now = api.ctx.clock.now() - timedelta(minutes=10)
    async with api.ctx.transaction() as session:
        fleet = fleet_row("pool", now)
        session.add(fleet)
        await session.flush()
        run_ids = list(
            (await session.execute(select(RunModel.id).where(RunModel.recipe_id == recipe_id)))
            .scalars()
            .all()
        )
        gpus = [{"index": i, "healthy": True} for i in range(8)]
        await session.execute(
            insert(NodeModel),
            [
                {
                    "id": uuid.uuid4().hex, "name": f"n{i}", "fleet_id": fleet.id,
                    "provider": "sim", "instance_type": H100, "region": "us-east1",
                    "state": "ready", "address": f"10.0.{i // 250}.{i % 250}", "gpus": gpus,
                    "cpus": 64, "price_per_hour": 31.2, "created_at": now,
                }
                for i in range(RUNNING)
            ],
        )  # fmt: skip
        for i, run_id in enumerate(run_ids):
            await session.execute(
                update(TaskModel)
                .where(TaskModel.run_id == run_id)
                .values(status="running", node=f"n{i}", gpus=list(range(8)), started_at=now)
            )
        await session.execute(
            update(RunModel)
            .where(RunModel.id.in_(run_ids))
            .values(status="running", reason="", started_at=now)
        )
    return run_ids


async def _finish(api: Api, run_id: str) -> None:
    """Finish `run_id` and its task as the server does: through its sessions."""
    async with api.ctx.transaction() as session:
        run = await session.get(RunModel, run_id)
        assert run is not None
        now = api.ctx.clock.now()
        run.status, run.finished_at = "succeeded", now
        for task in (
            await session.execute(select(TaskModel).where(TaskModel.run_id == run_id))
        ).scalars():
            task.status, task.finished_at, task.exit_code = "succeeded", now, 0


async def _rows(api: Api, node: str) -> list[tuple[str, bool]]:
    """(whose, still open) for `node`'s usage rows, by start."""
    async with api.ctx.sessions() as session:
        query = select(UsageModel).where(UsageModel.node == node).order_by(UsageModel.id)
        return [(r.user, r.ended_at is None) for r in (await session.execute(query)).scalars()]


async def test_a_step_after_one_run_finished_reads_that_run_not_every_running_one(
    api: Api,
) -> None:
    await api.stop_loops()
    run_ids = await _running_on_nodes(api)
    metering = Metering(api.ctx, full_every=3600)
    with objects_loaded() as full:
        await metering.step()  # the first step is full
    assert full["UsageModel"] >= RUNNING  # every open row was read
    assert await _rows(api, "n7") == [("admin", True)]

    await _finish(api, run_ids[7])
    with objects_loaded() as one:
        await metering.step()
    # That run's task and open row, its node: not the 999 others.
    assert sum(one.values()) <= 5, one
    assert await _rows(api, "n7") == [("admin", False), ("idle:pool", True)]
    assert await _rows(api, "n8") == [("admin", True)]

    with objects_loaded() as nothing:
        await metering.step()  # nothing changed: nothing read
    assert sum(nothing.values()) == 0, nothing


async def test_writes_outside_the_servers_sessions_wait_for_the_next_full_step(
    api: Api,
) -> None:
    await api.stop_loops()
    run_ids = await _running_on_nodes(api)
    metering = Metering(api.ctx, full_every=3600)
    await metering.step()
    # Another process finishes a run: this server's sessions never saw it.
    async with api.ctx.transaction() as session:
        now = api.ctx.clock.now()
        await session.execute(
            update(TaskModel)
            .where(TaskModel.run_id == run_ids[3])
            .values(status="succeeded", finished_at=now, exit_code=0)
        )
        await session.execute(
            update(RunModel).where(RunModel.id == run_ids[3]).values(status="succeeded")
        )
    await metering.step()
    assert await _rows(api, "n3") == [("admin", True)]
    await metering.drain()  # full
    assert await _rows(api, "n3") == [("admin", False), ("idle:pool", True)]


async def test_a_failed_step_makes_the_next_one_full(api: Api, monkeypatch: Any) -> None:
    """What a failed step took from the write log is not lost: the next step reads
    everything again."""
    await api.stop_loops()
    run_ids = await _running_on_nodes(api)
    metering = Metering(api.ctx, full_every=3600)
    await metering.step()
    await _finish(api, run_ids[5])

    import flotilla.server.reconcilers.metering as module

    real = module.close_rows

    async def broken(*args: Any, **kwargs: Any) -> int:
        raise ConnectionResetError("the database went away")

    monkeypatch.setattr(module, "close_rows", broken)
    with pytest.raises(ConnectionResetError):
        await metering.step()
    monkeypatch.setattr(module, "close_rows", real)
    with objects_loaded() as seen:
        await metering.step()
    assert seen["UsageModel"] >= RUNNING  # full again
    assert await _rows(api, "n5") == [("admin", False), ("idle:pool", True)]
