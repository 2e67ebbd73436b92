"""`flo nodes` and `flo node ...` against a real server with two declared H100s."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import ADMIN_TOKEN, ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir, FLOTILLA_LOCAL_GPUS="H100:2").start()
    yield process
    process.stop()


def flo(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    # Wide enough that rich does not wrap table cells the assertions look for.
    env.update({"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": ADMIN_TOKEN, "COLUMNS": "200"})
    return subprocess.run(
        ["flo", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_list_describe_and_admin_actions(server: ServerProcess) -> None:
    listed = flo(server, "nodes", "--json")
    assert listed.returncode == 0, listed.stderr
    nodes = json.loads(listed.stdout)
    assert [n["name"] for n in nodes] == ["local"]
    assert nodes[0]["gpu_counts"]["total"] == 2

    table = flo(server, "nodes")
    assert table.returncode == 0, table.stderr
    assert "local" in table.stdout and "2/2 free H100" in table.stdout
    assert "ready" in table.stdout

    cordoned = flo(server, "node", "cordon", "local", "--reason", "bad fan")
    assert cordoned.returncode == 0, cordoned.stderr
    assert cordoned.stdout.strip() == "node local: cordoned (bad fan)"
    assert json.loads(flo(server, "nodes", "--state", "cordoned", "--json").stdout)[0]["name"] == (
        "local"
    )

    described = flo(server, "node", "describe", "local")
    assert described.returncode == 0, described.stderr
    assert "node local: cordoned (bad fan)" in described.stdout
    assert "ready -> cordoned: bad fan" in described.stdout and "admin" in described.stdout
    detail = json.loads(flo(server, "node", "describe", "local", "--json").stdout)
    assert detail["state"] == "cordoned" and len(detail["gpus"]) == 2

    uncordoned = flo(server, "node", "uncordon", "local")
    assert uncordoned.returncode == 0 and "node local: ready (by admin)" in uncordoned.stdout


def test_errors_are_one_red_line(server: ServerProcess) -> None:
    again = flo(server, "node", "uncordon", "local")
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        "error: cannot uncordon node local: it is ready (needs cordoned or draining)"
    ]
    local = flo(server, "node", "terminate", "local", "--yes")
    assert local.returncode == 1
    assert "the local node is this machine; cordon it instead" in local.stderr
    missing = flo(server, "node", "describe", "nope")
    assert missing.returncode == 1 and "node 'nope' not found" in missing.stderr
    bad_state = flo(server, "nodes", "--state", "asleep")
    assert bad_state.returncode == 2  # typer's usage error
