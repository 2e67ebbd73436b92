"""The unmodified `sc` CLI (saturn-client) driving a Saturn-style deployment and
running `sc split`'s generated recipe against a real Flotilla server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.factories import ADMIN_TOKEN, ServerProcess, free_port, wait_sync
from tests.test_sc_cli import sc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]


def _started(data_dir: Path, **env: str) -> ServerProcess:
    return ServerProcess(data_dir, **env).start()


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProcess]:
    process = _started(data_dir)
    yield process
    process.stop()


@pytest.fixture
def sam_token(server: ServerProcess) -> str:
    """An ordinary user's API token: what `sc` runs with."""
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"token {ADMIN_TOKEN}"}
    ) as api:
        assert api.post("/api/users", json={"username": "sam", "email": "s@x.org"}).is_success
        token = api.post("/api/users/sam/tokens", json={"name": "sc", "scopes": ["read", "write"]})
        assert token.status_code == 201, token.text
    value: str = token.json()["token"]
    return value


DEPLOYMENT = """\
type: deployment
spec:
  name: sc-web
  instance_type: local
  command: python3 -m http.server {port} --bind 127.0.0.1
  routes:
    - container_port: {port}
"""


def _view(server: ServerProcess, token: str) -> dict[str, Any]:
    headers = {"Authorization": f"token {token}"}
    answer = httpx.get(f"{server.url}/api/deployments/sc-web", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    view: dict[str, Any] = answer.json()
    return view


def _ready_replica(server: ServerProcess, token: str, not_run: str = "") -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        replicas = [r for r in _view(server, token)["replicas"] if r["ready"]]
        return next((r for r in replicas if r["run_id"] != not_run), None)

    found: dict[str, Any] = wait_sync(ready, timeout=60, what="a ready replica")
    return found


def test_sc_drives_a_saturn_style_deployment(
    server: ServerProcess,
    sam_token: str,
    tmp_path: Path,
) -> None:
    port = free_port()
    recipe = tmp_path / "deployment.yaml"
    recipe.write_text(DEPLOYMENT.format(port=port))
    assert "Applied deployment sc-web" in sc(server, sam_token, "apply", str(recipe)).stdout
    # Saturn waits for `sc start`: created stopped, with nothing to run.
    view = _view(server, sam_token)
    assert view["status"] == "stopped" and view["replicas"] == []

    assert (
        "Started deployment sc-web" in sc(server, sam_token, "start", "deployment", "sc-web").stdout
    )
    first = _ready_replica(server, sam_token)
    # It listens on its route's container port, not on a $PORT: that is where it is.
    assert first["ports"] == {str(port): port}
    assert httpx.get(f"http://127.0.0.1:{port}/", timeout=10).status_code == 200
    assert "running" in sc(server, sam_token, "pods", "deployment", "sc-web").stdout

    def logged() -> str | None:
        text = sc(server, sam_token, "logs", "deployment", "sc-web").stdout
        return text if "GET / HTTP" in text else None

    wait_sync(logged, what="the request in the replica's log")

    sc(server, sam_token, "restart", "deployment", "sc-web")
    second = _ready_replica(server, sam_token, not_run=first["run_id"])
    assert second["number"] > first["number"]

    assert (
        "Stopped deployment sc-web" in sc(server, sam_token, "stop", "deployment", "sc-web").stdout
    )

    def stopped() -> bool:
        pods = sc(server, sam_token, "pods", "deployment", "sc-web").stdout
        return _view(server, sam_token)["status"] == "stopped" and "running" not in pods

    wait_sync(stopped, what="the deployment stopped")
    deleted = sc(server, sam_token, "delete", "deployment", "sc-web").stdout
    assert "Deleted deployment sc-web" in deleted
    assert "sc-web" not in sc(server, sam_token, "list", "deployment").stdout


def test_sc_options_and_orgs_answer_like_saturn(
    server: ServerProcess,
    sam_token: str,
) -> None:
    sizes = sc(server, sam_token, "options").stdout
    assert "'name': 'local'" in sizes
    headers = {"Authorization": f"token {sam_token}"}
    orgs = httpx.get(f"{server.url}/api/orgs", headers=headers, timeout=10).json()
    assert [o["is_primary"] for o in orgs["orgs"]] == [True]


TEMPLATE = """\
type: job
spec:
  name: sc-split
  instance_type: local
  # One rank: saturn-client's file sync copies to a fixed /tmp/data.tar.gz in
  # every rank, and two ranks on one unconfined host share /tmp (one truncates
  # the archive the other extracts; 1 run in 4 here). The split over ranks is
  # test_sc_recipes.py's.
  scale: 1
  command: echo placeholder
  environment_variables:
    # Saturn sets these in every pod; saturn-client will not import without them
    # (Flotilla does not set them yet). `sc batch` itself never calls the server.
    SATURN_BASE_URL: {url}
    SATURN_TOKEN: unused-by-sc-batch
"""


@pytest.fixture
def root_server(data_dir: Path) -> Iterator[ServerProcess]:
    """Tasks run as the server's user: `sc batch` (in this virtualenv, under /root)
    must run inside them, as it does in Saturn's images."""
    process = _started(data_dir, FLOTILLA_RUN_AS_USER="false")
    yield process
    process.stop()


def test_sc_split_recipes_run_every_command_once(
    root_server: ServerProcess, tmp_path: Path
) -> None:
    server, token = root_server, ADMIN_TOKEN
    out, done = tmp_path / "out", tmp_path / "done"
    done.mkdir()
    runs = [{"cmd": f"echo {i} >> {done}/{i}"} for i in range(3)]
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps({"remote_output_path": str(out), "nprocs": 1, "runs": runs}))
    template = tmp_path / "template.yaml"
    template.write_text(TEMPLATE.format(url=server.url))
    commands = tmp_path / "commands"
    sc(
        server,
        token,
        "split",
        str(template),
        str(batch),
        "--batch-size",
        "1",
        "--local-commands-directory",
        str(commands),
        "--file-syncs-base-dir-url",
        f"file://{tmp_path / 'sync'}",
    )
    generated = commands / "recipe.yaml"
    assert "sc batch" in generated.read_text()
    sc(server, token, "apply", str(generated), "--start")

    def finished() -> list[str] | None:
        codes = sorted(out.glob("*/status_code"))
        return [c.read_text() for c in codes] if len(codes) == 3 else None

    assert wait_sync(finished, timeout=120, what="every batch command") == ["0", "0", "0"]
    # Each command ran once, across the job's two tasks.
    assert sorted(p.read_text() for p in done.iterdir()) == ["0\n", "1\n", "2\n"]
