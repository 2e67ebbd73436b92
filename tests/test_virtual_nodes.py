"""Virtual nodes (FLOTILLA_SIM_VIRTUAL): simulated cloud nodes whose tasks are
timed from the recipe instead of run, through the real server path — scheduled,
supervised, metered, stopped — so scale runs need no processes (issue 14).

The command of every job here is `sleep 3600`: that a run ends in a second or two
shows it was timed, not run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.orm import Session

from flotilla.compute.base import LaunchRequest, TaskRef, Workload
from flotilla.compute.sim.provider import IbNetwork, SimConfig, SimProvider
from flotilla.compute.virtual.backend import LOG_TEXT, STOPPED_EXIT_CODE, VirtualBackend, timing
from flotilla.runtime.taskspec import EXITED, RUNNING, UNKNOWN, TaskState
from tests.conftest import Api, make_settings, open_api
from tests.factories import apply_and_start, job, wait_for, wait_run

pytestmark = pytest.mark.timeout(90)
H100 = "h100-80gb-sxm-ib.8x"


def _request(
    task_id: str = "t-0-0",
    command: str | None = "sleep 3600",
    argv: list[str] | None = None,
    **env: str,
) -> LaunchRequest:
    ref = TaskRef(task_id, "run", 0, 0, "sim-000001")
    return LaunchRequest(ref, Workload(argv=argv, shell=command), env=dict(env), virtual=True)


@pytest.mark.parametrize(
    ("request_", "seconds", "code"),
    [
        (_request(command="sleep 120"), 120.0, 0),
        (_request(command="sleep 1.5 && python train.py"), 1.5, 0),
        (_request(command=None, argv=["sleep", "30"]), 30.0, 0),
        (_request(command="python train.py"), 0.0, 0),
        (_request(FLOTILLA_VIRTUAL_SECONDS="7", FLOTILLA_VIRTUAL_EXIT_CODE="3"), 7.0, 3),
        (_request(FLOTILLA_VIRTUAL_SECONDS="soon"), 3600.0, 0),  # not a number: the sleep
        (_request(FLOTILLA_VIRTUAL_SECONDS="-5"), 0.0, 0),
    ],
)
def test_a_task_takes_the_time_its_recipe_gives(
    request_: LaunchRequest, seconds: float, code: int
) -> None:
    assert (timing(request_).seconds, timing(request_).exit_code) == (seconds, code)


async def test_the_backend_times_stops_and_answers_for_its_tasks(tmp_path: Path) -> None:
    events: list[TaskState] = []

    async def on_event(state: TaskState) -> None:
        events.append(state)

    backend = VirtualBackend(tmp_path)
    await backend.start(on_event)
    quick = _request("quick", FLOTILLA_VIRTUAL_SECONDS="0.05", FLOTILLA_VIRTUAL_EXIT_CODE="2")
    slow = _request("slow")
    await backend.launch(quick)
    await backend.launch(quick)  # idempotent
    await backend.launch(slow)
    assert [e.phase for e in events] == [RUNNING, RUNNING]
    assert backend.holds(quick.task) and not backend.holds(TaskRef("other", "r", 0, 0, None))

    async def quick_ended() -> bool:
        return any(e.task_id == "quick" and e.phase == EXITED for e in events)

    await wait_for(quick_ended, timeout=5, what="the quick task's end")
    await backend.stop(slow.task, 10.0)
    await asyncio.sleep(0)  # the end event is delivered by a task of its own
    ended = {e.task_id: e for e in events if e.phase == EXITED}
    assert ended["quick"].exit_code == 2 and not ended["quick"].stopped
    assert ended["slow"].exit_code == STOPPED_EXIT_CODE and ended["slow"].stopped
    observed = await backend.observe([quick.task, slow.task, TaskRef("gone", "r", 0, 0, None)])
    assert [s.phase for s in observed] == [EXITED, EXITED, UNKNOWN]
    assert backend.running == 0
    assert backend.log_files(slow.task).main.read_text() == LOG_TEXT
    await backend.close()


@pytest.fixture
async def api(data_dir: Path) -> AsyncIterator[Api]:
    cloud = SimProvider(
        SimConfig(
            networks=[IbNetwork("east-ib", "us-east1", H100, slices=4 * 8, partitions=1)],
            provisioning_delay=0.1,
            virtual=True,
        )
    )
    settings = make_settings(data_dir, local_node=False, sim_virtual=True)
    async for item in open_api(settings, providers={"sim": cloud}):
        yield item


async def _fleet(api: Api, nodes: int) -> None:
    recipe = {
        "type": "fleet",
        "spec": {"name": "pool", "provider": "sim", "instance_type": H100, "nodes": nodes},
    }
    r = await api.client.put(
        "/api/recipes", json={**recipe, "spec": {**recipe["spec"], "region": "us-east1"}}
    )
    assert r.status_code == 201, r.text

    async def ready() -> bool:
        listed = (await api.client.get("/api/nodes", params={"state": "ready"})).json()["nodes"]
        return len(listed) == nodes and all(n["labels"]["execution"] == "virtual" for n in listed)

    await wait_for(ready, what=f"{nodes} ready virtual nodes")


def _job(name: str, scale: int = 2, **env: str) -> dict[str, Any]:
    return job(
        name,
        "sleep 3600",
        scale=scale,
        resources={"gpu": "H100:8"},
        environment_variables={"FLOTILLA_VIRTUAL_SECONDS": "0.5", **env},
    )


async def test_a_gang_on_virtual_nodes_runs_through_the_server_and_is_metered(api: Api) -> None:
    await _fleet(api, 2)
    _, run_id = await apply_and_start(api.client, _job("timed"))
    done = await wait_run(api.client, run_id, "succeeded", "failed", timeout=30)
    assert done["status"] == "succeeded", done
    assert len({t["node"] for t in done["tasks"]}) == 2
    assert all(t["exit_code"] == 0 and t["pid"] is None for t in done["tasks"])
    events = (await api.client.get(f"/api/runs/{run_id}/events")).json()["events"]
    assert any("on virtual nodes" in e["message"] for e in events), events
    # Nothing runs on this machine: no word of how it would run it.
    assert not any(e["message"].startswith("local backend") for e in events), events
    logs = await api.client.get(f"/api/runs/{run_id}/logs", params={"rank": 1})
    assert "virtual node" in logs.text

    async def billed() -> dict[str, Any] | None:
        cost: dict[str, Any] = (await api.client.get(f"/api/usage/runs/{run_id}")).json()
        closed = len(cost["tasks"]) == 2 and all(t["ended_at"] for t in cost["tasks"])
        return cost if closed else None

    cost = await wait_for(billed, what="the run's usage rows closed")
    assert cost["gpu_seconds"] > 0, cost


async def test_a_virtual_failure_and_a_stop_end_runs_as_real_ones_would(api: Api) -> None:
    await _fleet(api, 2)
    _, failing = await apply_and_start(
        api.client, _job("failing", scale=1, FLOTILLA_VIRTUAL_EXIT_CODE="3")
    )
    failed = await wait_run(api.client, failing, "succeeded", "failed", timeout=30)
    assert failed["status"] == "failed" and failed["tasks"][0]["exit_code"] == 3, failed
    job_id, long = await apply_and_start(
        api.client, _job("long", scale=1, FLOTILLA_VIRTUAL_SECONDS="3600")
    )
    await wait_run(api.client, long, "running", timeout=30)
    assert (await api.client.post(f"/api/jobs/{job_id}/stop")).status_code == 200
    stopped = await wait_run(api.client, long, "stopped", "failed", "succeeded", timeout=30)
    assert stopped["status"] == "stopped", stopped


async def test_a_full_resync_reads_no_run_spec_it_has_read_before(api: Api) -> None:
    """Supervision's full resync looks at every placed run: it keeps what it needs of
    their specs (max_duration), so later resyncs read none of them again, and
    max_duration still stops a run that outlives it."""
    await _fleet(api, 4)
    started = []
    for name, limit in (("long-1", None), ("long-2", None), ("capped", "2s")):
        recipe = _job(name, scale=1, FLOTILLA_VIRTUAL_SECONDS="3600")
        if limit is not None:
            recipe["spec"]["max_duration"] = limit
        started.append((await apply_and_start(api.client, recipe))[1])
    for run_id in started:
        await wait_run(api.client, run_id, "running", timeout=30)
    assert api.app is not None
    await api.stop_loops()  # this test steps supervision itself
    supervision = next(loop for loop in api.app.state.loops if loop.name == "supervision")
    specs_read: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "runs.spec" in statement:
            specs_read.append(statement)

    supervision._last_full = 0.0  # a full resync now: it may read what it has not seen
    await supervision.step()
    await asyncio.sleep(2.1)  # past the capped run's max_duration
    event.listen(api.ctx.engine.sync_engine, "before_cursor_execute", count)
    try:
        supervision._last_full = 0.0  # the next: every spec was read before
        await supervision.step()
    finally:
        event.remove(api.ctx.engine.sync_engine, "before_cursor_execute", count)
    assert specs_read == []
    run = (await api.client.get(f"/api/runs/{started[2]}")).json()
    assert "exceeded max_duration of 2s" in (run["stop_reason"] or ""), run


def _statements(api: Api) -> contextlib.AbstractContextManager[list[str]]:
    """The SQL statements issued inside the block."""

    @contextlib.contextmanager
    def counting() -> Iterator[list[str]]:
        seen: list[str] = []

        def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            seen.append(statement)

        event.listen(api.ctx.engine.sync_engine, "before_cursor_execute", count)
        try:
            yield seen
        finally:
            event.remove(api.ctx.engine.sync_engine, "before_cursor_execute", count)

    return counting()


async def _running_runs(
    api: Api, name: str, count: int, retries: int = 0, **env: str
) -> tuple[str, list[str]]:
    """`count` running runs of a new job `name`, of one task on one GPU each."""
    recipe = _job(name, scale=1, **env)
    recipe["spec"].update(retries=retries, resources={"gpu": "H100:1"})
    job_id, first = await apply_and_start(api.client, recipe)
    runs = [first]
    for _ in range(count - 1):
        r = await api.client.post(f"/api/jobs/{job_id}/start")
        assert r.status_code == 200, r.text
        runs.append(r.json()["run"]["id"])
    for run_id in runs:
        await wait_run(api.client, run_id, "running", timeout=30)
    return job_id, runs


async def test_runs_ending_together_are_written_in_one_flush(api: Api) -> None:
    """A stop of many runs ends them all in one supervision step whose statements
    do not grow with the runs: no run reads its spec on its own (which flushed the
    run before it, one round trip per write), and only the runs that may retry read
    theirs, all in one query."""
    many = 8
    await _fleet(api, 2)  # 16 GPUs
    job_id, stopped = await _running_runs(api, "long", many, FLOTILLA_VIRTUAL_SECONDS="3600")
    _, failing = await _running_runs(
        api, "failing", many, 1, FLOTILLA_VIRTUAL_SECONDS="3", FLOTILLA_VIRTUAL_EXIT_CODE="3"
    )
    assert api.app is not None
    await api.stop_loops()  # this test steps supervision itself
    supervision = next(loop for loop in api.app.state.loops if loop.name == "supervision")
    assert (await api.client.post(f"/api/jobs/{job_id}/stop")).status_code == 200
    await supervision.step()  # delivers the stops; the nodes answer with the ends

    async def all_ended() -> bool:
        ended = [s for s in supervision.events.values() if s.phase == EXITED]
        return len(ended) == 2 * many

    await wait_for(all_ended, timeout=10, what="every task's end")
    supervision._last_full = time.monotonic()  # not a full resync: only what changed
    flushes: list[Session] = []

    def flushed(session: Session, *_: Any) -> None:
        flushes.append(session)

    event.listen(Session, "after_flush", flushed)
    try:
        with _statements(api) as statements:
            await supervision.step()
    finally:
        event.remove(Session, "after_flush", flushed)
    for run_id in stopped:
        assert (await api.client.get(f"/api/runs/{run_id}")).json()["status"] == "stopped"
    for run_id in failing:
        run = (await api.client.get(f"/api/runs/{run_id}")).json()
        assert (run["status"], run["attempt"]) == ("pending", 1), run
        assert "retry 1 of 1" in run["reason"], run
    reads = [s for s in statements if s.lstrip().startswith("SELECT")]
    specs = [s for s in reads if "runs.spec" in s]
    assert len(specs) == 1, specs  # the eight that retry, together
    # The runs and their tasks, the specs and the recipes of those that retry.
    assert len(reads) <= 4, reads
    # Written together: one flush for what the reads before it changed, one at
    # the commit (a read between two runs' writes flushed the first on its own).
    assert len(flushes) <= 2, flushes
