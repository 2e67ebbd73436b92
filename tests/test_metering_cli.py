"""`flo usage`, `flo budget` and saturn-client's `get_org_usage`/`get_user_usage`
against a real server (work runs on the server's own machine, at $0 an hour)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.factories import ADMIN_TOKEN, ServerProcess, wait_sync

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir).start()
    yield process
    process.stop()


def flo(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    env.update({"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": ADMIN_TOKEN, "COLUMNS": "200"})
    return subprocess.run(["flo", *args], env=env, capture_output=True, text=True, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.args, result.stdout, result.stderr)
    return result.stdout


def test_usage_and_budgets_from_the_cli_and_saturn_client(
    server: ServerProcess, tmp_path: Path
) -> None:
    out = ok(flo(server, "budget", "set", "--user", "admin", "--dollars-per-month", "100"))
    assert out.strip() == "budget for user admin: $/month $100.00, warn at 80%"
    # Setting one limit keeps the others.
    out = ok(flo(server, "budget", "set", "--user", "admin", "--max-gpus", "16"))
    assert out.strip() == "budget for user admin: $/month $100.00, GPUs at once 16, warn at 80%"
    listed = json.loads(ok(flo(server, "budget", "list", "--json")))
    assert [lim["limit"] for lim in listed[0]["limits"]] == ["max_gpus", "dollars_per_month"]
    table = ok(flo(server, "budget", "list"))
    assert "user admin" in table and "dollars per month" in table and "ok" in table

    recipe = tmp_path / "job.yaml"
    recipe.write_text("type: job\nspec:\n  name: metered\n  command: sleep 1\n")
    ok(flo(server, "apply", str(recipe), "--start"))

    def closed_usage() -> dict[str, object] | None:
        report = json.loads(ok(flo(server, "usage", "--by", "user", "--json")))
        return report if report["rows"] and report["total"]["runs"] == 1 else None

    report = wait_sync(closed_usage, what="the run's usage")
    assert report["rows"][0]["user"] == "admin" and report["rows"][0]["cost"] == 0.0
    shown = ok(flo(server, "usage", "--by", "project,day"))
    assert "total" in shown and "gpu hours" in shown
    csv_text = ok(flo(server, "usage", "--by", "user,day", "--csv"))
    assert csv_text.splitlines()[0].startswith("user,day,node_seconds,gpu_seconds")
    assert csv_text.splitlines()[1].startswith("admin,")

    from saturn_client import SaturnConnection

    with SaturnConnection(url=server.url, api_token=ADMIN_TOKEN) as saturn:
        now = datetime.now(UTC)
        org = saturn.get_org_usage("default", now - timedelta(days=1), now + timedelta(days=1))
        assert [(r["user"], r["instance_type"], r["cost"]) for r in org] == [
            ("admin", "local", 0.0)
        ]
        mine = saturn.get_user_usage("default", "admin", now - timedelta(days=1), now)
        assert mine[0]["date"] == org[0]["date"]

    # A spent budget refuses the next start in one red line.
    ok(flo(server, "budget", "set", "--user", "admin", "--dollars-per-month", "0"))
    refused = flo(server, "apply", str(recipe), "--start")
    assert refused.returncode == 1
    assert refused.stderr.startswith(
        "error: user admin has used $0.00 of its $0.00 monthly budget"
    ), refused.stderr
    bad = flo(server, "usage", "--by", "colour")
    assert bad.returncode == 1 and bad.stderr.startswith("error: by: colour is not one of")
    ok(flo(server, "budget", "delete", "--user", "admin"))
    assert json.loads(ok(flo(server, "budget", "list", "--json"))) == []
