"""Workloads outlive the control plane: kill -9 the server while runs run, restart
it, and every run is re-adopted with the right exit code, none started twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import ServerProcess, job, wait_sync

pytestmark = pytest.mark.slow


@pytest.fixture
def server(data_dir: Path, database_url: str | None) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir, database_url).start()
    yield process
    process.stop()


def _run(client: httpx.Client, run_id: str) -> dict[str, object]:
    return dict(client.get(f"/api/runs/{run_id}").json())


def _start(client: httpx.Client, recipe: dict[str, object]) -> str:
    job_id = client.put("/api/recipes", json=recipe).json()["state"]["id"]
    return str(client.post(f"/api/jobs/{job_id}/start").json()["run"]["id"])


def test_kill_9_then_restart_readopts_runs(server: ServerProcess, data_dir: Path) -> None:
    with server.client() as client:
        short = _start(client, job("short", "echo start; sleep 2; exit 5"))
        long = _start(client, job("long", "echo start; sleep 60"))
        gang = _start(client, job("gang", "echo start; sleep 60", scale=2))
        for run_id in (short, long, gang):
            wait_sync(
                lambda r=run_id: _run(client, r)["status"] == "running", what=f"{run_id} running"
            )
        pids = {r: [t["pid"] for t in _run(client, r)["tasks"]] for r in (long, gang)}  # type: ignore[union-attr]

    server.kill9()
    # While the server is down, `short` finishes with exit code 5.
    result = data_dir / "runs" / short / "attempt-0" / "rank-0" / "result.json"
    wait_sync(result.exists, what="the short run to finish while the server is down")
    server.start()

    with server.client() as client:
        done = wait_sync(
            lambda: _run(client, short)["status"] == "failed" and _run(client, short),
            what="exit recorded",
        )
        assert done["exit_code"] == 5
        for run_id, before in pids.items():
            run = _run(client, run_id)
            assert run["status"] == "running"
            assert [t["pid"] for t in run["tasks"]] == before  # the same processes  # type: ignore[index]
        for name in ("short", "long", "gang"):
            runs = client.get(
                f"/api/jobs/{client.get(f'/api/recipes/job/{name}').json()['state']['id']}/runs"
            ).json()["runs"]
            assert len(runs) == 1
        # Nothing started twice: each task printed "start" exactly once.
        for log in (data_dir / "runs").rglob("main.log"):
            assert log.read_text().count("start") == 1, log
        job_id = client.get("/api/recipes/job/long").json()["state"]["id"]
        client.post(f"/api/jobs/{job_id}/stop")
        stopped = wait_sync(
            lambda: _run(client, long)["status"] == "stopped" and _run(client, long), what="stop"
        )
        assert stopped["exit_code"] in (143, 0)
