"""The typed SDK (`flotilla/client/sdk.py`): the README's example runs as written
against a real server and says what it should; answers are the API's models and
refusals the ApiError subclass of their status."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flotilla.api.runs import Run
from flotilla.client import Flotilla, InvalidRequest, NotFound
from flotilla.client.calls import ApiError
from tests.factories import ADMIN_TOKEN, ServerProcess

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir).start()
    yield process
    process.stop()


def readme_example() -> str:
    """The Python block of the README's SDK section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python SDK", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "the README's SDK section has no python block"
    return found.group(1)


def test_the_readmes_example_runs(server: ServerProcess) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    env |= {"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": ADMIN_TOKEN}
    ran = subprocess.run(
        [sys.executable, "-c", readme_example()],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "succeeded local", ran.stdout
    assert lines[1].startswith("hello from run ") and "GREETING=hi there" in ran.stdout
    assert lines[-1] == "refused: not_found job 'no-such-job' not found", ran.stdout


def test_models_out_and_typed_errors_out(server: ServerProcess, tmp_path: Path) -> None:
    with Flotilla(server.url, ADMIN_TOKEN) as flo:
        applied = flo.apply({"type": "job", "spec": {"name": "quick", "command": "echo hi"}})
        assert applied.type == "job" and applied.spec["name"] == "quick"
        run = flo.start("quick")
        assert isinstance(run, Run) and run.job == "quick"
        done = flo.wait(run.id, timeout=60)
        assert done.status == "succeeded" and flo.logs(done) == "hi\n"
        assert "".join(flo.follow_logs(done)) == "hi\n"
        assert [r.id for r in flo.runs("quick")] == [run.id]
        assert {n.name for n in flo.nodes()} == {"local"}
        with pytest.raises(InvalidRequest) as refused:
            flo.apply({"type": "job", "spec": {"name": "Bad Name", "command": "true"}})
        assert refused.value.status == 422 and refused.value.errors[0]["field"] == "spec.name"
        with pytest.raises(NotFound):
            flo.run("no-such-run")
        bad = tmp_path / "bad.yaml"
        bad.write_text("type: job\nspec: [unclosed\n")
        with pytest.raises(InvalidRequest, match="not YAML"):
            flo.apply_file(bad)
        slow = flo.apply({"type": "job", "spec": {"name": "slow", "command": "sleep 30"}})
        started = flo.start(slow.spec["name"])
        with pytest.raises(TimeoutError, match="still"):
            flo.wait(started, timeout=0.5, poll=0.1)
        flo.stop("slow")
    with Flotilla("http://127.0.0.1:9", "x") as nowhere, pytest.raises(ApiError) as down:
        nowhere.nodes()
    assert down.value.status == 0 and down.value.code == "unreachable"
