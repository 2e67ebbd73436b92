"""The trigger benchmark keeps working (Flotilla side only; Slurm is not started in
tests). It must end with one JSON line holding its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_trigger_benchmark_runs_and_prints_json() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.trigger",
            "--latency-samples",
            "5",
            "--burst",
            "20",
            "--skip-slurm",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["flotilla"]["submitted"] == 20
    assert figures["flotilla"]["start_latency_s"]["p50"] > 0


def test_scheduler_benchmark_runs_and_keeps_its_quality() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.scheduler", "--nodes", "200", "--runs", "1000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert 900 <= figures["placements"] == figures["runs_that_fit"]
    assert figures["multi_node_in_one_partition_pct"] == 100.0
    assert figures["multi_node_in_smallest_subtree_pct"] == 100.0


def test_scale_benchmark_runs_and_prints_json() -> None:
    """A small run of `bench.scale`: virtual nodes, a filled fleet, two depths."""
    url = os.environ.get("FLOTILLA_TEST_PG_URL")
    if not url:
        pytest.skip("needs PostgreSQL (FLOTILLA_TEST_PG_URL)")
    argv = ["--nodes", "8", "--partitions", "2", "--depths", "10,40", "--samples", "5"]
    result = subprocess.run(
        [sys.executable, "-m", "bench.scale", *argv, "--database-url", url, "--skip-slurm"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["flotilla"]["fill"]["runs"] == 8
    assert set(figures["flotilla"]["depths"]) == {"10", "40"}
    at = figures["flotilla"]["depths"]["40"]
    assert at["start"]["p50"] > 0 and at["queue_page_p50_ms"] > 0 and at["rss_mb"] > 0
    # The 8 freed nodes were taken by 8 of the runs queued behind them.
    placed = figures["flotilla"]["placements"]
    assert placed["runs"] == 8 and placed["pending"] == 45 and placed["placements_per_s"] > 0
