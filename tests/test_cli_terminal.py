"""The real `flo` in an 80x24 pseudo-terminal (what a user's tmux window is) against a
real server: long job, fleet and deployment names and every status stay whole in
`list`, `runs`, `nodes`, `fleets`, `deployments` and `queue`, no line is wider than
the terminal, statuses are coloured, ids short and times relative; `flo apply
--start` shows why a run waits instead of calling it started; `--watch` redraws."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import ADMIN_TOKEN, ServerProcess, apply_sync, start_sync, wait_sync

# Every `flo` is a fresh Python process: on a loaded machine a handful take a while.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

COLUMNS, ROWS = 80, 24
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
GREEN = "\x1b[32m"
JOB = "allreduce-benchmark-nccl-h100-x8-nightly"  # 40 characters
WAITING_JOB = "needs-eight-a100s-that-nobody-has-here"
FLEET = "h100-elastic-fleet-for-the-long-names"
DEPLOYMENT = "hello-api-with-a-rather-long-service-name"


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir, FLOTILLA_SIM_PROVISIONING_DELAY="0.2").start()
    yield process
    process.stop()


def env_for(server: ServerProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    env.update({"FLOTILLA_URL": server.url, "FLOTILLA_TOKEN": ADMIN_TOKEN})
    return env


def in_terminal(
    server: ServerProcess,
    *args: str,
    timeout: float = 60,
    interrupt_at: str | None = None,
    times: int = 1,
) -> tuple[int, str]:
    """Run `flo ARGS` on an 80x24 pty (stdin, stdout and stderr); its exit status
    and everything it wrote, as the terminal received it. With `interrupt_at`, press
    Ctrl-C (SIGINT) once that text has been written `times` times."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    env = {**env_for(server), "COLUMNS": str(COLUMNS), "LINES": str(ROWS), "TERM": "xterm"}
    proc = subprocess.Popen(
        ["flo", *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its side of the terminal
                break
            if not chunk:
                break
            out += chunk
            written = ANSI.sub("", out.decode(errors="replace"))
            if interrupt_at and written.count(interrupt_at) >= times:
                proc.send_signal(signal.SIGINT)
                interrupt_at = None
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(10), out.decode(errors="replace")


def plain(text: str) -> list[str]:
    return ANSI.sub("", text).replace("\r", "").splitlines()


def assert_whole(lines: list[str], *words: str) -> None:
    """Each word is on one line, uncut; no line is wider than the terminal."""
    too_wide = [line for line in lines if len(line) > COLUMNS]
    assert not too_wide, "\n".join(lines)
    for word in words:
        assert any(word in line for line in lines), f"{word!r} cut or missing:\n" + "\n".join(lines)
    assert not any("…" in line for line in lines), "\n".join(lines)


def test_tables_keep_names_and_statuses_whole_at_80_columns(
    server: ServerProcess, tmp_path: Path
) -> None:
    api = server.client()
    apply_sync(api, "job", {"name": JOB, "command": "true"})
    apply_sync(api, "job", {"name": WAITING_JOB, "command": "true", "resources": {"gpu": "A100:8"}})
    fleet = {"provider": "sim", "instance_type": "h100-80gb-sxm-ib.8x", "region": "us-east1"}
    apply_sync(api, "fleet", {"name": FLEET, **fleet, "nodes": 1})
    apply_sync(api, "deployment", {"name": DEPLOYMENT, "command": "sleep 600"})
    run_id = start_sync(api, JOB)
    start_sync(api, WAITING_JOB)
    run = wait_sync(
        lambda: (r := api.get(f"/api/runs/{run_id}").json())["status"] == "succeeded" and r,
        what="the job's run to succeed",
    )
    nodes = wait_sync(
        lambda: [n for n in api.get("/api/nodes").json()["nodes"] if n["fleet"]],
        what="the fleet's node",
    )

    rc, listed = in_terminal(server, "list")
    assert rc == 0, listed
    assert_whole(plain(listed), JOB, WAITING_JOB, FLEET, DEPLOYMENT, "succeeded")
    assert GREEN + "succeeded" in listed  # coloured

    rc, runs = in_terminal(server, "runs", JOB)
    assert rc == 0, runs
    assert_whole(plain(runs), "succeeded", run["id"][:8], " ago")
    assert run["id"] not in ANSI.sub("", runs)  # short in the table ...
    rc, as_json = in_terminal(server, "runs", JOB, "--json")
    assert json.loads(ANSI.sub("", as_json))[0]["queued_at"] == run["queued_at"]  # ISO there
    rc, wide = in_terminal(server, "runs", JOB, "--wide")
    assert rc == 0 and run["id"] in ANSI.sub("", wide).replace("\r\n", ""), wide

    rc, shown = in_terminal(server, "nodes")
    assert rc == 0, shown
    assert_whole(plain(shown), nodes[0]["name"], "local", "ready")

    rc, fleets = in_terminal(server, "fleets")
    assert rc == 0, fleets
    assert_whole(plain(fleets), FLEET)

    rc, deployments = in_terminal(server, "deployments")
    assert rc == 0, deployments
    assert_whole(plain(deployments), DEPLOYMENT)

    rc, queue = in_terminal(server, "queue")
    assert rc == 0, queue
    assert_whole(plain(queue), f"{WAITING_JOB}#1")


def test_start_shows_why_a_run_waits_and_watch_redraws(
    server: ServerProcess, tmp_path: Path
) -> None:
    recipe = tmp_path / "waits.yaml"
    recipe.write_text(
        f"type: job\nspec:\n  name: {WAITING_JOB}\n  command: 'true'\n"
        "  resources: {gpu: 'A100:8'}\n"
    )
    rc, shown = in_terminal(server, "apply", str(recipe), "--start", interrupt_at="waiting: ")
    text = ANSI.sub("", shown)
    assert rc == 130, shown
    assert "waiting: " in text and " s)" in text  # the phase, with how long it has lasted
    assert f"queued job {WAITING_JOB} run 1" in text and "flo queue" in text
    assert "started" not in text

    api = server.client()
    apply_sync(api, "job", {"name": JOB, "command": "echo from-the-run"})
    rc, shown = in_terminal(server, "apply", str(recipe), "--start", "--detach")
    assert rc == 0 and f"started job {WAITING_JOB} run 2" in ANSI.sub("", shown), shown

    # --watch redraws (the screen cleared, the table again) until Ctrl-C, then exits 0.
    for command in (["list", "--watch"], ["nodes", "-w"]):
        rc, watched = in_terminal(
            server,
            *command,
            interrupt_at="instance type" if command[0] == "nodes" else JOB,
            times=2,
        )
        assert rc == 0 and "\x1b[2J" in watched and "Traceback" not in watched, watched
