"""Schemathesis over the whole of `/openapi.json` against a real server (issue 13):
a bounded number of generated requests per operation, as the admin, and not one
answer is a 5xx, a status the operation does not document, or a body outside its
schema. Seeded, so a failure is reproduced by running it again (`schemathesis run`
prints each failing request as a curl line)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import ADMIN_TOKEN, ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
SCHEMATHESIS = shutil.which("schemathesis")
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir, FLOTILLA_SSH_PORT="off").start()
    yield process
    process.stop()


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed (dev extras)")
def test_generated_requests_get_only_documented_answers(
    server: ServerProcess, tmp_path: Path
) -> None:
    assert SCHEMATHESIS is not None
    argv = [SCHEMATHESIS, "run", f"{server.url}/openapi.json"]
    argv += ["-H", f"Authorization: token {ADMIN_TOKEN}", "--checks", CHECKS]
    argv += ["--max-examples", "3", "--phases", "examples,coverage,fuzzing", "--workers", "2"]
    argv += ["--seed", "13", "--request-timeout", "30", "--no-color"]
    ran = subprocess.run(  # in tmp_path: it keeps a .schemathesis cache where it runs
        argv, cwd=tmp_path, capture_output=True, text=True, timeout=540, check=False
    )
    assert ran.returncode == 0, ran.stdout[-8000:] + ran.stderr[-2000:]  # non-zero: a failure
