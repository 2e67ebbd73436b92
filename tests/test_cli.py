"""The `flo` CLI against a real server: apply, list, runs, logs, export, errors."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.factories import ADMIN_TOKEN, ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir).start()
    yield process
    process.stop()


def flo(
    server: ServerProcess, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    base.update(
        env if env is not None else {"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": ADMIN_TOKEN}
    )
    return subprocess.run(
        ["flo", *args], env=base, capture_output=True, text=True, timeout=60, input=stdin
    )


def test_apply_start_follow_runs_export(server: ServerProcess, tmp_path: Path) -> None:
    recipe = tmp_path / "job.yaml"
    recipe.write_text(
        "type: job\nspec:\n  name: cli-job\n  command: echo one; sleep 0.5; echo two\n"
    )
    applied = flo(server, "apply", str(recipe), "--start")
    assert applied.returncode == 0, applied.stderr
    assert (
        "applied job cli-job (version 1)" in applied.stdout
        and "started job cli-job run 1" in applied.stdout
    )

    followed = flo(server, "logs", "cli-job", "--follow")
    assert followed.returncode == 0 and followed.stdout == "one\ntwo\n"
    assert "succeeded" in followed.stderr

    runs = json.loads(flo(server, "runs", "cli-job", "--json").stdout)
    assert runs[0]["status"] == "succeeded" and runs[0]["exit_code"] == 0
    listed = json.loads(flo(server, "list", "--json").stdout)
    assert [r["spec"]["name"] for r in listed] == ["cli-job"]
    assert "cli-job" in flo(server, "list").stdout  # the table

    exported = flo(server, "export")
    documents = list(yaml.safe_load_all(exported.stdout))
    assert documents[0]["spec"]["command"] == "echo one; sleep 0.5; echo two"
    assert "state" not in documents[0]
    reapplied = tmp_path / "exported.yaml"
    reapplied.write_text(exported.stdout)
    assert "version 1" in flo(server, "apply", str(reapplied)).stdout  # unchanged: same version

    described = flo(server, "describe", "cli-job")
    assert described.returncode == 0 and "succeeded" in described.stdout

    secret = flo(server, "secret", "set", "token", stdin="hunter2\n")
    assert secret.returncode == 0
    assert "hunter2" not in flo(server, "secret", "list").stdout
    audited = json.loads(flo(server, "audit", "--action", "/api/secrets", "--json").stdout)
    assert [(e["actor"], e["action"], e["outcome"]) for e in audited] == [
        ("admin", "POST /api/secrets", "success")
    ]
    assert "hunter2" not in flo(server, "audit").stdout

    assert flo(server, "delete", "cli-job", "--yes").returncode == 0
    assert json.loads(flo(server, "list", "--json").stdout) == []


def test_errors_are_one_line_with_non_zero_exit(server: ServerProcess, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: job\nspec:\n  name: x\n  comand: echo\n")
    result = flo(server, "apply", str(bad))
    assert result.returncode == 1
    assert "spec.comand: unknown field 'comand'; did you mean 'command'?" in result.stderr

    missing = flo(server, "start", "nope")
    assert missing.returncode == 1 and "job 'nope' not found" in missing.stderr

    wrong_token = flo(server, "list", env={"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": "nope"})
    assert wrong_token.returncode == 1 and "invalid API token" in wrong_token.stderr

    unreachable = flo(
        server, "list", env={"FLOTILLA_URL": "http://127.0.0.1:9", "FLOTILLA_TOKEN": "x"}
    )
    assert unreachable.returncode == 3 and "cannot reach" in unreachable.stderr


def test_cli_finds_the_local_server_and_accepts_saturn_variables(server: ServerProcess) -> None:
    local = {"FLOTILLA_DATA_DIR": str(server.data_dir), "FLOTILLA_PORT": str(server.port)}
    assert flo(server, "list", env=local).returncode == 0  # admin token file, local port
    saturn = {
        "SATURN_BASE_URL": server.url,
        "SATURN_TOKEN": ADMIN_TOKEN,
        "HOME": str(server.data_dir),
    }
    assert flo(server, "list", env=saturn).returncode == 0
