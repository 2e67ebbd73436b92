"""The scheduler's work per step does not grow with the queue: with 10,000 runs
pending it reads the head of each owner's queue (a window per priority tier, in
arrival order), so one more run adds at most one row to what it reads, and runs
beyond the window wait their turn without being loaded (issue 14).

Runs are inserted in bulk (as 10,000 API calls would take minutes), shaped as
`services/runs/runs.create_run` makes them; every row the snapshot turns into
a `RunModel` or `TaskModel` is counted through SQLAlchemy's `load` event."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import QueryContext

from flotilla.server.db.models import RecipeModel, RunModel, TaskModel
from flotilla.server.services.fleets.fleets import DEMAND_PAGE, load_fleets
from flotilla.server.services.runs import queue as queue_service
from flotilla.server.services.runs.capacity import Capacity
from flotilla.server.services.runs.queue_head import QueueHead
from flotilla.server.services.runs.scheduling import PENDING_WINDOW, Snapshot, load_snapshot
from tests.conftest import Api
from tests.factories import add_user, job

QUEUED = 10_000
HOLDERS = 2_000
# No node has this GPU type: every run stays pending, whatever the machine has.
UNPLACEABLE = {"gpu": "B200:8"}
H100 = "h100-80gb-sxm-ib.8x"  # the simulated cloud's 8-GPU H100 instance


async def _pending(
    api: Api,
    name: str,
    count: int,
    priority: int = 0,
    headers: httpx.Headers | None = None,
    resources: dict[str, str] = UNPLACEABLE,
) -> str:
    """`count` pending runs of a new job `name` (its applier's), oldest first; the
    job's id."""
    recipe = job(name, "true", resources=resources, priority=priority)
    r = await api.client.put("/api/recipes", json=recipe, headers=headers)
    assert r.status_code == 201, r.text
    recipe_id: str = r.json()["state"]["id"]
    now = api.ctx.clock.now()
    async with api.ctx.transaction() as session:
        stored = await session.get(RecipeModel, recipe_id)
        assert stored is not None
        owner = stored.owner
        runs: list[dict[str, Any]] = []
        tasks: list[dict[str, Any]] = []
        for number in range(1, count + 1):
            run_id = uuid.uuid4().hex
            runs.append(_run(run_id, recipe_id, number, stored.spec, owner, priority, now, number))
            tasks.append(_task(run_id, name, number))
        if runs:
            await session.execute(insert(RunModel), runs)
            await session.execute(insert(TaskModel), tasks)
        stored.run_counter = count
    return recipe_id


def _run(
    run_id: str,
    recipe_id: str,
    number: int,
    spec: dict[str, Any],
    owner: str,
    priority: int,
    now: Any,
    order: int,
) -> dict[str, Any]:
    return {
        "id": run_id,
        "recipe_id": recipe_id,
        "owner": owner,
        "priority": priority,
        "number": number,
        "attempt": 0,
        "status": "pending",
        "reason": "queued",
        "trigger": "api",
        "created_by": owner,
        "spec": spec,
        "queued_at": now + timedelta(microseconds=order),
        "retries_used": 0,
    }


def _task(run_id: str, name: str, number: int) -> dict[str, Any]:
    return {
        "id": f"{run_id}-0-0",
        "run_id": run_id,
        "attempt": 0,
        "rank": 0,
        "name": f"{name}-{number}-0",
        "status": "pending",
        "gpus": [],
        "message": "",
    }


@contextmanager
def rows_loaded(session: AsyncSession) -> Iterator[Counter[str]]:
    """How many run and task rows `session` turns into objects while the block
    runs (the server's own loops read in sessions of their own)."""
    seen: Counter[str] = Counter()

    def count(target: Any, context: QueryContext) -> None:
        if context.session is session.sync_session:
            seen[type(target).__name__] += 1

    for model in (RunModel, TaskModel):
        event.listen(model, "load", count)
    try:
        yield seen
    finally:
        for model in (RunModel, TaskModel):
            event.remove(model, "load", count)


async def _snapshot_rows(
    api: Api, capacity: Capacity | None = None
) -> tuple[Counter[str], list[str]]:
    seen, snapshot = await _counted_snapshot(api, capacity or Capacity(api.ctx.writes.reader()))
    return seen, [w.run.id for w in snapshot.pending]


async def _counted_snapshot(api: Api, capacity: Capacity) -> tuple[Counter[str], Snapshot]:
    async with api.ctx.sessions() as session, session.begin():
        with rows_loaded(session) as seen:
            snapshot = await load_snapshot(session, api.ctx.clock.now(), capacity)
    return seen, snapshot


async def _holding(api: Api, name: str, count: int) -> list[str]:
    """`count` running runs of a new job, each with one task on the local node."""
    recipe_id = await _pending(api, name, 0)
    now = api.ctx.clock.now()
    async with api.ctx.transaction() as session:
        stored = await session.get(RecipeModel, recipe_id)
        assert stored is not None
        runs = [
            {
                **_run(uuid.uuid4().hex, recipe_id, n, stored.spec, stored.owner, 0, now, n),
                "status": "running",
                "started_at": now,
            }
            for n in range(1, count + 1)
        ]
        tasks = [
            {**_task(run["id"], name, n), "status": "running", "node": "local"}
            for n, run in enumerate(runs, 1)
        ]
        await session.execute(insert(RunModel), runs)
        await session.execute(insert(TaskModel), tasks)
    return [run["id"] for run in runs]


async def test_a_step_reads_again_only_the_runs_that_changed(api: Api) -> None:
    """With thousands of runs holding nodes, a step reads them once; after that
    only the queue head and the holders that committed transactions changed."""
    await api.stop_loops()  # this test is the only scheduler
    holders = await _holding(api, "held", HOLDERS)
    job_id = await _pending(api, "deep", QUEUED)
    capacity = Capacity(api.ctx.writes.reader())
    first, snapshot = await _counted_snapshot(api, capacity)
    assert first["RunModel"] == HOLDERS + PENDING_WINDOW
    assert {p.run.id for p in snapshot.placed} == set(holders)
    head = Counter({"RunModel": PENDING_WINDOW, "TaskModel": PENDING_WINDOW})

    # One more run queued through the API: the same rows as before.
    r = await api.client.post(f"/api/jobs/{job_id}/start")
    assert r.status_code == 200, r.text
    again, snapshot = await _counted_snapshot(api, capacity)
    assert again == head
    assert len(snapshot.placed) == HOLDERS

    # A holder asked to stop (still holding) is read again, alone; one that ended
    # is dropped without a row to read.
    async with api.ctx.transaction() as session:
        stopping, ended = (
            (await session.get(RunModel, holders[0])),
            (await session.get(RunModel, holders[1])),
        )
        assert stopping is not None and ended is not None
        stopping.stop_requested_at = api.ctx.clock.now()
        ended.status = "succeeded"
    changed, snapshot = await _counted_snapshot(api, capacity)
    assert changed == head + Counter({"RunModel": 1, "TaskModel": 1})
    placed = {p.run.id: p for p in snapshot.placed}
    assert holders[1] not in placed and len(placed) == HOLDERS - 1
    assert placed[holders[0]].run.stop_requested_at is not None


async def test_fleets_read_the_queue_only_as_far_as_they_could_grow(api: Api) -> None:
    await api.stop_loops()  # nothing provisions or places: the queue stays as made
    job_id = await _pending(api, "wants-h100", QUEUED, resources={"gpu": "H100:8"})
    async with api.ctx.transaction() as session:
        looked_at = update(RunModel).where(RunModel.recipe_id == job_id)
        await session.execute(looked_at.values(reason="no capacity: no ready H100 GPU node"))

    async def fleet_demand(nodes: int | str) -> tuple[int, int]:
        spec = {"provider": "sim", "instance_type": H100, "region": "us-east1", "nodes": nodes}
        r = await api.client.put(
            "/api/recipes", json={"type": "fleet", "spec": {"name": "h100", **spec}}
        )
        assert r.status_code in (200, 201), r.text
        async with api.ctx.sessions() as session:
            snapshot = await load_fleets(session, api.ctx.providers, planning=True)
        return len(snapshot.demands), next(iter(snapshot.desired().values()))

    # A fixed fleet never grows: the queue is not read. An elastic one reads a page
    # (its 3 nodes' worth is in the first), not the 10,000 runs.
    assert await fleet_demand(2) == (0, 2)
    assert await fleet_demand("0..3") == (DEMAND_PAGE, 3)


async def test_a_step_reads_the_queue_head_however_long_the_queue(api: Api) -> None:
    job_id = await _pending(api, "deep-queue", QUEUED)
    seen, ids = await _snapshot_rows(api)
    async with api.ctx.sessions() as session:
        oldest = list(
            (
                await session.execute(
                    select(RunModel.id)
                    .where(RunModel.recipe_id == job_id)
                    .order_by(RunModel.queued_at)
                    .limit(PENDING_WINDOW)
                )
            ).scalars()
        )
    assert ids == oldest  # the window is the head of the queue, in arrival order
    assert seen == {"RunModel": PENDING_WINDOW, "TaskModel": PENDING_WINDOW}

    # One more run: one more owner's head grows by one row; the same owner's does not.
    await _pending(api, "one-more", 1, headers=await add_user(api.ctx, "someone-else"))
    more, ids = await _snapshot_rows(api)
    assert len(ids) == PENDING_WINDOW + 1
    assert more == {"RunModel": PENDING_WINDOW + 1, "TaskModel": PENDING_WINDOW + 1}


async def test_each_priority_tier_and_owner_has_its_own_window(api: Api) -> None:
    await _pending(api, "low", PENDING_WINDOW + 10)
    await _pending(api, "urgent", 3, priority=10)
    _, ids = await _snapshot_rows(api)
    async with api.ctx.sessions() as session:
        tiers = Counter(
            (await session.execute(select(RunModel.priority).where(RunModel.id.in_(ids)))).scalars()
        )
    # A later, higher-priority run is never left behind a long low tier.
    assert tiers == {0: PENDING_WINDOW, 10: 3}


async def _page(api: Api, headers: httpx.Headers | None = None, **params: Any) -> dict[str, Any]:
    r = await api.client.get("/api/queue", params=params, headers=headers)
    assert r.status_code == 200, r.text
    page: dict[str, Any] = r.json()
    return page


async def _finish(api: Api, run_ids: list[str]) -> None:
    # One read, then one flush: its UPDATEs go in primary-key order like every
    # server writer's, so this cannot deadlock with the scheduler writing reasons
    # (one UPDATE per `session.get` did, on PostgreSQL).
    async with api.ctx.transaction() as session:
        query = select(RunModel).where(RunModel.id.in_(run_ids))
        runs = list((await session.execute(query)).scalars())
        assert len(runs) == len(set(run_ids))
        for run in runs:
            run.status = "stopped"


async def test_paging_sees_every_waiting_run_once_while_the_queue_changes(api: Api) -> None:
    await _pending(api, "paged", 250)
    first = await _page(api, limit=50)
    seen = [r["run_id"] for r in first["runs"]]
    assert [r["position"] for r in first["runs"]] == list(range(1, 51))
    all_ids = await _ids(api)
    cursor = first["next"]
    rounds = 0
    while cursor is not None:
        # Between pages: runs behind and ahead of the cursor start, new ones arrive.
        rest = [i for i in all_ids if i not in seen]
        await _finish(api, [seen[0], *rest[::23][:2]])
        await _pending(api, f"late-{rounds}", 5)
        page = await _page(api, limit=50, after=cursor)
        positions = [r["position"] for r in page["runs"]]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        seen += [r["run_id"] for r in page["runs"]]
        cursor, rounds = page["next"], rounds + 1
    assert len(seen) == len(set(seen))  # nothing twice
    waiting_all_along = set(await _ids(api)) & set(all_ids)
    assert waiting_all_along <= set(seen)  # nothing that waited throughout is missed
    assert rounds >= 5


async def _ids(api: Api) -> list[str]:
    async with api.ctx.sessions() as session:
        query = select(RunModel.id).where(RunModel.status == "pending")
        return list((await session.execute(query.order_by(RunModel.queued_at))).scalars())


async def test_a_user_pages_their_own_runs_with_everyones_positions(api: Api) -> None:
    await _pending(api, "admins", 30)
    alice = await add_user(api.ctx, "alice")
    await _pending(api, "alices", 3, headers=alice)
    page = await _page(api, headers=alice, limit=2)
    assert [r["job"] for r in page["runs"]] == ["alices", "alices"]
    assert [r["position"] for r in page["runs"]] == [31, 32]
    last = await _page(api, headers=alice, limit=2, after=page["next"])
    assert [r["position"] for r in last["runs"]] == [33] and last["next"] is None


async def test_page_limits_and_bad_cursors_are_named(api: Api) -> None:
    for params, field in (
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"after": "not-a-cursor"}, "after"),
    ):
        r = await api.client.get("/api/queue", params=params)
        assert r.status_code == 422, r.text
        assert [e["field"].split(".")[-1] for e in r.json()["errors"]] == [field], r.text
    empty = await _page(api)
    assert empty == {"runs": [], "next": None}


async def test_the_queue_head_is_read_again_only_where_it_changed(api: Api) -> None:
    """The scheduler's `QueueHead` keeps the runs it read: after the first step a
    step turns into objects only the runs new to the head or changed since."""
    await api.stop_loops()  # this test is the only scheduler
    job_id = await _pending(api, "deep", QUEUED)
    capacity, queue = Capacity(api.ctx.writes.reader()), QueueHead(api.ctx.writes.reader())

    async def step() -> tuple[Counter[str], list[str]]:
        async with api.ctx.sessions() as session, session.begin():
            with rows_loaded(session) as seen:
                snapshot = await load_snapshot(session, api.ctx.clock.now(), capacity, queue=queue)
        return seen, [w.run.id for w in snapshot.pending]

    first, head = await step()
    assert first == {"RunModel": PENDING_WINDOW, "TaskModel": PENDING_WINDOW}
    assert await step() == (Counter(), head)  # nothing changed: nothing read

    # A run queued behind the window is not read; another owner's, new to the head, is.
    r = await api.client.post(f"/api/jobs/{job_id}/start")
    assert r.status_code == 200, r.text
    assert await step() == (Counter(), head)
    await _pending(api, "other", 1, headers=await add_user(api.ctx, "someone-else"))
    seen, ids = await step()
    assert seen == {"RunModel": 1, "TaskModel": 1} and len(ids) == PENDING_WINDOW + 1

    # A run of the head changed through the server's sessions is read again, alone.
    async with api.ctx.transaction() as session:
        changed = await session.get(RunModel, head[7])
        assert changed is not None
        changed.reason = "looked at"
    seen, _ = await step()
    assert seen == {"RunModel": 1, "TaskModel": 1}
    # One taken out of the queue by another process leaves the head at once (the
    # ids are asked every step); the next in line comes in.
    async with api.ctx.transaction() as session:
        await session.execute(
            update(RunModel).where(RunModel.id == head[0]).values(status="stopped")
        )
    seen, ids = await step()
    assert head[0] not in ids and seen == {"RunModel": 1, "TaskModel": 1}
    assert ids[: PENDING_WINDOW - 1] == head[1:]


async def test_a_run_placed_while_a_page_is_read_leaves_the_page(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page is two reads (the runs, then their positions): a run that starts in
    between is no longer waiting, and the page leaves it out rather than failing."""
    if api.ctx.engine.dialect.name == "sqlite":
        pytest.skip("one connection: nothing commits between a page's two reads")
    await api.stop_loops()
    await _pending(api, "racing", 5)
    head = await _ids(api)
    real = queue_service._positions

    async def placed_meanwhile(session: AsyncSession, *args: Any) -> dict[str, int]:
        async with api.ctx.transaction() as other:  # another request, committed
            await other.execute(
                update(RunModel).where(RunModel.id == head[0]).values(status="starting")
            )
        return await real(session, *args)

    monkeypatch.setattr(queue_service, "_positions", placed_meanwhile)
    page = await _page(api, limit=3)
    assert [r["run_id"] for r in page["runs"]] == head[1:3]
    assert [r["position"] for r in page["runs"]] == [1, 2]


async def test_concurrent_starts_of_one_job_get_distinct_numbers(api: Api) -> None:
    """Starts of one job at once (a burst of triggers, several clients) each get
    their own run number: the counter is taken in the database, not read and
    written back (on PostgreSQL two starts read the same count and both wrote it
    plus one)."""
    applied = await api.client.put("/api/recipes", json=job("burst", resources=UNPLACEABLE))
    assert applied.status_code == 201, applied.text
    job_id = applied.json()["state"]["id"]

    async def start() -> int:
        started = await api.client.post(f"/api/jobs/{job_id}/start")
        assert started.status_code == 200, started.text
        return int(started.json()["run"]["number"])

    numbers = await asyncio.gather(*(start() for _ in range(12)))
    assert sorted(numbers) == list(range(1, 13)), numbers


async def test_any_run_of_a_long_history_is_stopped_by_its_name(api: Api) -> None:
    """A run is found by its id, its number or its pod's name with a query, not
    among the job's newest runs (the oldest of 10,001 was not found)."""
    job_id = await _pending(api, "long-history", 10_001)
    async with api.ctx.sessions() as session:
        oldest, second, third = (
            await session.execute(
                select(RunModel.id)
                .where(RunModel.recipe_id == job_id, RunModel.number <= 3)
                .order_by(RunModel.number)
            )
        ).scalars()
    for name in ("1", second, "long-history-3-0"):
        stopped = await api.client.post(f"/api/jobs/{job_id}/stop/{name}")
        assert stopped.status_code == 200, (name, stopped.text)
    for run_id in (oldest, second, third):
        run = (await api.client.get(f"/api/runs/{run_id}")).json()
        assert run["status"] == "stopped", run
    missing = await api.client.post(f"/api/jobs/{job_id}/stop/long-history-99999-0")
    assert missing.status_code == 404, missing.text
