"""The unmodified `sc` CLI (saturn-client from PyPI) against a real Flotilla server."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.factories import ADMIN_TOKEN, ServerProcess, wait_sync

pytestmark = pytest.mark.slow

RECIPE = """\
schema_version: 2025.10.01
type: job
spec:
  name: sc-hello
  instance_type: local
  command: echo "hello from sc"; sleep 1; echo "rank $SATURN_JOB_RANK done"; sleep {sleep}
  environment_variables:
    FOO: bar
"""


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir).start()
    yield process
    process.stop()


@pytest.fixture
def sam_token(server: ServerProcess) -> str:
    """An ordinary user's API token, made the way an admin would: `sc` works with it."""
    admin = {"Authorization": f"token {ADMIN_TOKEN}"}
    with httpx.Client(base_url=server.url, headers=admin) as api:
        user = api.post("/api/users", json={"username": "sam", "email": "sam@example.com"})
        assert user.status_code == 201, user.text
        token = api.post("/api/users/sam/tokens", json={"name": "sc", "scopes": ["read", "write"]})
        assert token.status_code == 201, token.text
    value: str = token.json()["token"]
    return value


def sc(
    server: ServerProcess, token: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SATURN_BASE_URL": server.url, "SATURN_TOKEN": token}
    result = subprocess.run(["sc", *args], env=env, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def test_sc_apply_list_pods_logs_stop_delete(
    server: ServerProcess, sam_token: str, tmp_path: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(sleep=0))
    out = sc(server, sam_token, "apply", str(recipe), "--start").stdout
    assert "Applied job sc-hello" in out and "Started job sc-hello" in out

    listed = sc(server, sam_token, "list", "job").stdout
    assert "sc-hello" in listed and "local" in listed

    def pods_completed() -> str | None:
        text = sc(server, sam_token, "pods", "job", "sc-hello").stdout
        return text if "completed" in text else None

    pods = wait_sync(pods_completed, what="the pod to complete")
    assert "sc-hello-1-0" in pods
    logs = sc(server, sam_token, "logs", "job", "sc-hello").stdout
    assert "hello from sc" in logs and "rank 0 done" in logs
    assert (
        "hello from sc" in sc(server, sam_token, "logs", "job", "sc-hello", "sc-hello-1-0").stdout
    )

    got = sc(server, sam_token, "get", "job", "sc-hello").stdout
    assert "name: sc-hello" in got and "FOO: bar" in got

    # A long run: live pods and logs, then stop.
    recipe.write_text(RECIPE.format(sleep=60))
    sc(server, sam_token, "apply", str(recipe))
    sc(server, sam_token, "start", "job", "sc-hello")

    def live_logs() -> str | None:
        text = sc(server, sam_token, "logs", "job", "sc-hello").stdout
        return text if "rank 0 done" in text and "sc-hello-2-0" in text else None

    wait_sync(live_logs, what="live logs of the second run")
    assert "running" in sc(server, sam_token, "pods", "job", "sc-hello", "--source", "live").stdout
    sc(server, sam_token, "restart", "job", "sc-hello")
    assert "Stopped job sc-hello" in sc(server, sam_token, "stop", "job", "sc-hello").stdout

    def all_stopped() -> bool:
        text = sc(server, sam_token, "pods", "job", "sc-hello").stdout
        return "running" not in text and "pending" not in text and "stopping" not in text

    wait_sync(all_stopped, what="all pods stopped")
    assert (
        "Scheduled job sc-hello"
        in sc(server, sam_token, "schedule", "sc-hello", "0 3 * * *").stdout
    )
    assert (
        "Unscheduled job sc-hello"
        in sc(server, sam_token, "schedule", "sc-hello", "--disable").stdout
    )

    assert "Deleted job sc-hello" in sc(server, sam_token, "delete", "job", "sc-hello").stdout
    missing = sc(server, sam_token, "get", "job", "sc-hello", check=False)
    assert missing.returncode != 0
    assert "sc-hello" not in sc(server, sam_token, "list", "job").stdout
