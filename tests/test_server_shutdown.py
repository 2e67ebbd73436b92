"""Ctrl-C on `flo server` while a client follows a log: the server closes the open
stream after its grace (`serve.GRACEFUL_SHUTDOWN_SECONDS`) and exits, rather than
waiting for the followed run to end; the run itself keeps going (the agent owns
it)."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.factories import AUTH, ServerProcess, cleanup_data_dir, wait_sync

pytestmark = pytest.mark.timeout(180)


def test_ctrl_c_with_a_followed_log_stops_the_server(data_dir: Path) -> None:
    server = ServerProcess(data_dir).start()
    try:
        api = server.client()
        recipe = {"type": "job", "spec": {"name": "long", "command": "echo up; sleep 300"}}
        job_id = api.put("/api/recipes", json=recipe).json()["state"]["id"]
        run_id = api.post(f"/api/jobs/{job_id}/start").json()["run"]["id"]
        wait_sync(lambda: api.get(f"/api/runs/{run_id}").json()["status"] == "running")
        received: list[bytes] = []

        def follow() -> None:
            url = f"{server.url}/api/runs/{run_id}/logs"
            params = {"follow": "true"}
            try:
                with httpx.stream("GET", url, params=params, headers=AUTH, timeout=120) as r:
                    received.extend(r.iter_bytes())
            except httpx.HTTPError:
                received.append(b"<closed>")

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        wait_sync(lambda: b"up" in b"".join(received), what="the followed log")
        assert server.proc is not None
        server.proc.send_signal(signal.SIGINT)
        try:
            server.proc.wait(60)  # far less than the run's 300 s
        except subprocess.TimeoutExpired:
            raise AssertionError("the server waited for the followed run") from None
        follower.join(10)
        assert not follower.is_alive(), "the stream was left open"
    finally:
        server.stop()
        cleanup_data_dir(data_dir)
