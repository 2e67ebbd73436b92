"""The `flo` first-hour polish: `--version`, grouped `--help`, `--json` as a flag,
unknown names refused, brackets kept in errors, job commands that recognise a
deployment, `flo deployment logs|scale|stop|start|restart`, the pointer to setup
logs, and a `flo logs -f` that ends in one line when interrupted or when the server
goes away. Offline checks run without a server; the rest against a real one."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import ADMIN_TOKEN, ServerProcess, apply_sync, start_sync, wait_sync

OFFLINE_URL = "http://127.0.0.1:9"  # nothing listens: the offline checks never connect


def environment(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOTILLA_", "SATURN_"))}
    env.update({"FLOTILLA_URL": url, "FLOTILLA_TOKEN": ADMIN_TOKEN, "COLUMNS": "200"})
    return env


def flo(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["flo", *args],
        env=environment(url),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_version_and_grouped_help() -> None:
    shown = flo(OFFLINE_URL, "--version")
    assert shown.returncode == 0 and shown.stdout.startswith("flo (Flotilla) "), shown
    helped = flo(OFFLINE_URL, "--help").stdout
    panels = ["Jobs and runs", "Serving", "Capacity", "People and access", "Costs"]
    positions = [helped.index(f"─ {panel} ") for panel in panels]
    assert positions == sorted(positions), helped
    assert "─ Other " not in helped  # every command has its group
    assert helped.index("│ deployment ") > helped.index("─ Serving ")


def test_json_is_a_flag_without_a_value() -> None:
    for command in (["list"], ["runs"], ["nodes"], ["fleets"], ["queue"], ["deployments"]):
        helped = flo(OFFLINE_URL, *command, "--help").stdout
        (line,) = [line for line in helped.splitlines() if "--json" in line]
        assert "<bool>" not in line, helped


def test_no_flag_reads_as_taking_a_value() -> None:
    """Every boolean flag of every command is shown without a `<bool>` value (as if
    `--start true` were the way to ask); walked in-process, as 60 subprocesses
    would be slow. typer's own `--help` and completion flags are left."""
    import typer

    from flotilla.cli.main import app

    # typer carries a click of its own: options and groups are told by their parts.
    def walk(command: Any, path: str) -> Iterator[tuple[str, Any]]:
        for param in command.params:
            if getattr(param, "is_flag", False):
                yield path, param
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    flags = list(walk(typer.main.get_command(app), "flo"))
    assert len(flags) > 30
    typers_own = {"--version", "--install-completion", "--show-completion"}
    shown = [
        (path, p.opts[0]) for path, p in flags if p.metavar != "" and p.opts[0] not in typers_own
    ]
    assert shown == [], shown
    helped = flo(OFFLINE_URL, "apply", "--help").stdout
    flagged = [line for line in helped.splitlines() if "<bool>" in line]
    assert len(flagged) == 1 and "--help" in flagged[0], helped


def test_brackets_in_an_error_are_printed(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("type: job\nspec:\n  name: Bad_Name\n  command: 'true'\n")
    refused = flo(OFFLINE_URL, "apply", str(recipe))
    assert refused.returncode == 1
    assert "'^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'" in refused.stderr, refused.stderr


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(data_dir).start()
    yield process
    process.stop()


def replicas(api: httpx.Client, name: str) -> list[dict[str, Any]]:
    return list(api.get(f"/api/deployments/{name}").json()["replicas"])


def spec(api: httpx.Client, name: str) -> dict[str, Any]:
    return dict(api.get(f"/api/recipes/deployment/{name}").json()["spec"])


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_names_types_and_deployments(server: ServerProcess, tmp_path: Path) -> None:
    api, url = server.client(), server.url
    apply_sync(api, "job", {"name": "hello", "command": "echo hi"})
    for args in (["list", "--json", "true"], ["list", "nope"]):
        refused = flo(url, *args)
        assert refused.returncode == 1, refused
        assert refused.stderr.startswith(f"error: nothing is named '{args[-1]}'"), refused.stderr
    assert "[]" not in flo(url, "list", "--json", "true").stdout
    by_name = flo(url, "list", "hello", "--json")
    assert by_name.returncode == 0 and '"name": "hello"' in by_name.stdout

    command = "echo replica-says-hello; sleep 600"
    apply_sync(api, "deployment", {"name": "hello-api", "command": command, "scale": 1})
    for verb, instead in (("logs", "logs"), ("stop", "stop"), ("runs", "describe")):
        refused = flo(url, verb, "hello-api")
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            f"error: hello-api is a deployment: use `flo deployment {instead} hello-api`"
        ), refused.stderr
    assert "job 'nope' not found" in flo(url, "logs", "nope").stderr  # jobs: as before

    wait_sync(lambda: len(replicas(api, "hello-api")) == 1, what="a replica")
    wait_sync(
        lambda: "replica-says-hello" in flo(url, "deployment", "logs", "hello-api").stdout,
        what="the replica's log",
    )
    scaled = flo(url, "deployment", "scale", "hello-api", "2")
    assert scaled.stdout.strip() == "scaled deployment hello-api to 2 replica(s) (version 2)"
    assert spec(api, "hello-api")["scale"] == 2
    stopped = flo(url, "deployment", "stop", "hello-api")
    assert stopped.returncode == 0, stopped.stderr
    assert spec(api, "hello-api")["scale"] == 2  # stopped, not scaled: start brings both back
    wait_sync(lambda: not replicas(api, "hello-api"), what="the replicas to stop")
    started = flo(url, "deployment", "start", "hello-api")
    assert started.stdout.strip() == "started deployment hello-api", started
    wait_sync(lambda: len(replicas(api, "hello-api")) == 2, what="two replicas")
    before = {r["number"] for r in replicas(api, "hello-api")}
    restarted = flo(url, "deployment", "restart", "hello-api")
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.strip().startswith("restarting deployment hello-api"), restarted
    wait_sync(lambda: len(replicas(api, "hello-api")) == 2, what="two new replicas")
    assert not before & {r["number"] for r in replicas(api, "hello-api")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_setup_pointer_interrupt_and_lost_server(server: ServerProcess, tmp_path: Path) -> None:
    api, url = server.client(), server.url
    repos = [{"url": str(tmp_path / "no-such-repo")}]
    apply_sync(api, "job", {"name": "badclone", "command": "true", "git_repositories": repos})
    run_id = start_sync(api, "badclone")
    wait_sync(
        lambda: api.get(f"/api/runs/{run_id}").json()["status"] == "failed", what="the clone fail"
    )
    shown = flo(url, "logs", "badclone")
    assert shown.returncode == 0 and shown.stdout == ""
    assert "`flo logs badclone 1 --setup`" in shown.stderr, shown.stderr
    assert "git" in flo(url, "logs", "badclone", "--setup").stdout

    apply_sync(api, "job", {"name": "sleeper", "command": "echo started; sleep 120"})
    start_sync(api, "sleeper")
    for ending in ("interrupt", "server gone"):
        follower = subprocess.Popen(
            ["flo", "logs", "sleeper", "-f"],
            env=environment(url),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert follower.stdout is not None
        assert follower.stdout.readline() == "started\n"  # streaming
        if ending == "interrupt":
            follower.send_signal(signal.SIGINT)
        else:
            server.kill9()
        _, err = follower.communicate(timeout=60)
        if ending == "interrupt":
            assert follower.returncode == 130 and "Traceback" not in err, err
        else:
            assert follower.returncode == 1, err
            assert err.strip().splitlines() == [
                "error: lost the server while following the log"
                " (the run goes on; `flo logs -f` again)"
            ], err
