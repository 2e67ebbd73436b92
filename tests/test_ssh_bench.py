"""The SSH benchmark keeps working in a tiny mode and ends with one JSON line
holding every figure. Needs OpenSSH's ssh and sshd (CI installs them) and root,
which sshd needs to switch to the benchmark's user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench.ssh import SSHD

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    SSHD is None or shutil.which("ssh") is None or os.geteuid() != 0,
    reason="needs OpenSSH's ssh and sshd, as root",
)
def test_ssh_benchmark_runs_and_prints_json() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.ssh", "--repeat", "1", "--mib", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for figure in ("login_ms", "download_mb_s", "upload_mb_s"):
        assert set(figures[figure]) == {"flotilla", "sshd", "ratio"}
        assert figures[figure]["flotilla"] > 0 and figures[figure]["sshd"] > 0
