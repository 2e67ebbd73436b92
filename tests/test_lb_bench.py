"""The L4 load balancer benchmark keeps working in a tiny mode and ends with one JSON
line holding every figure. Needs HAProxy (CI installs the `haproxy` package)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/bin")

FIGURES = {
    "keepalive_rps",
    "keepalive_p99_ms",
    "newconn_per_s",
    "bulk_mb_s",
    "failover_s",
    "failover_client_failed_requests",
    "cpu_us_per_request",
    "cpu_us_per_connection",
}


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_lb_benchmark_runs_and_prints_json() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.lb",
            "--duration",
            "0.5",
            "--bulk-mib",
            "8",
            "--repeat",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    for proxy in ("haproxy", "flotilla"):
        assert figures[proxy].keys() >= FIGURES
        assert figures[proxy]["keepalive_rps"] > 0
        assert figures[proxy]["bulk_mb_s"] > 0
        assert figures[proxy]["failed_requests"] == 0
    assert figures["flotilla"]["failover_s"] <= 3.0  # fall 2 x inter 1 s + timeout 1 s
    assert set(figures["ratios_flotilla_over_haproxy"]) >= {
        "keepalive_rps",
        "newconn_per_s",
        "bulk_mb_s",
    }
    assert "targets_met" in figures
