"""The remote-node benchmark keeps working in a tiny mode (3 triggers per target,
5 agents, 3 s windows; Slurm is not started in tests) and ends with one JSON line
holding its figures; it leaves no agent process and no directory behind. Needs the
multi-host harness (root, ip, nsenter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hosts_fixture import require_hosts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[1]


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue  # gone meanwhile
    return found


def test_remote_benchmark_runs_prints_json_and_cleans_up(tmp_path: Path) -> None:
    require_hosts()
    argv = [sys.executable, "-m", "bench.remote", "--runs", "3", "--agents", "5"]
    argv += ["--window", "3", "--heartbeat", "1", "--skip-slurm"]
    # Its temporary directories (and so every agent's argv) under tmp_path.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])

    latency = figures["start_latency_s"]
    assert set(latency) == {"local", "remote"}
    for target in latency.values():
        assert 0 < target["p50"] <= target["p99"] < 30
    assert set(figures["ratios"]) == {"remote_over_local_p50", "remote_over_local_p99"}
    assert all(r > 0 for r in figures["ratios"].values())

    agents = figures["agents"]
    assert agents["count"] == 5
    assert agents["idle"]["rss_mb"] > 0 and agents["loaded"]["rss_mb"] > 0
    assert agents["loaded"]["cpu_percent"] > 0
    assert set(agents["per_agent"]) == {"rss_kb", "cpu_percent", "cpu_ms_per_heartbeat"}
    assert agents["agent_process_rss_mb"] > 5  # a real Python process answered
    for trips in ("hello_rtt_alone_s", "hello_rtt_s", "hello_sweep_s"):
        assert 0 < agents[trips]["p50"] <= agents[trips]["max"] < 5

    assert processes_mentioning(str(tmp_path)) == []
    assert list(tmp_path.iterdir()) == []
