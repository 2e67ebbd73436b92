"""The pieces behind saturn-client compatibility: Saturn's list commands run as a
sequence split across ranks, `extra_packages` installed by the start script, a
command's literal container port, deployments that wait for `start` when saturn-
client creates them, deployments named by id, `/api/orgs` and the sizes."""

from __future__ import annotations

import json
import subprocess

import pytest

from flotilla.errors import InvalidRecipe
from flotilla.recipes import JobSpec, parse_recipe
from flotilla.recipes.commands import install_script, sequence_script
from flotilla.recipes.deployment import DeploymentSpec
from flotilla.server.db.models import RecipeModel, RunModel, TaskModel
from flotilla.server.services.runs.jobs import run_spec
from flotilla.server.services.serving.deployments import (
    Replica,
    not_ready_reason,
    replica_host_ports,
)
from tests.conftest import Api

pytestmark = pytest.mark.timeout(60)
SATURN = {"X-Saturn-Client-Version": "2026.2.1"}


def _bash(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", "-c", script], env=env, capture_output=True, text=True, timeout=10
    )


def test_a_sequence_runs_each_command_once_across_the_ranks() -> None:
    script = sequence_script(["echo a", "echo b; echo c", "echo d"], scale=2)
    assert _bash(script, SATURN_JOB_RANK="0").stdout == "a\nd\n"
    assert _bash(script, SATURN_JOB_RANK="1").stdout == "b\nc\n"
    assert _bash(sequence_script(["echo a", "echo b"]), SATURN_JOB_RANK="0").stdout == "a\nb\n"


def test_a_sequence_stops_at_the_first_failing_command() -> None:
    done = _bash(sequence_script(["echo a", "exit 3", "echo never"]))
    assert (done.returncode, done.stdout) == (3, "a\n")


def test_saturn_clients_list_command_is_a_sequence_and_flotillas_is_argv() -> None:
    # saturn-client sends a list command JSON-encoded as a string.
    saturn = JobSpec.model_validate({"name": "s", "command": json.dumps(["echo a", "echo b"])})
    assert saturn.command == ["echo a", "echo b"] and saturn.command_list == "sequence"
    argv, shell = saturn.argv_or_shell()
    assert argv is None and shell is not None and "echo b" in shell
    stored = saturn.model_dump(mode="json")
    assert JobSpec.model_validate(stored).command_list == "sequence"  # it stays one
    native = JobSpec.model_validate({"name": "n", "command": ["echo", "$HOME; rm -rf /"]})
    assert native.argv_or_shell() == (["echo", "$HOME; rm -rf /"], None)
    # Stored specs of native recipes are as before: re-applying one is no new version.
    assert "command_list" not in native.model_dump(mode="json")


def test_extra_packages_are_installed_by_the_runs_start_script() -> None:
    extra = {"pip": "requests 'numpy>=2'", "apt": ["curl"], "conda": {"install": "xz"}}
    script = install_script(extra)
    assert script is not None
    assert "-m pip install requests 'numpy>=2'" in script
    assert "apt-get install -y -q curl" in script and "conda install -y xz" in script
    recipe = RecipeModel(
        spec={"name": "j", "command": "true", "start_script": "echo mine", "extra_packages": extra}
    )
    spec = run_spec(recipe)
    assert spec["start_script"].startswith(script) and spec["start_script"].endswith("echo mine")
    assert recipe.spec["start_script"] == "echo mine"  # the recipe keeps what was written
    assert install_script({"pip": ""}) is None


def test_a_missing_package_manager_fails_setup_saying_which() -> None:
    script = install_script({"conda": "xz"})
    assert script is not None
    done = _bash(script, PATH="/nonexistent")
    assert done.returncode == 1 and "extra_packages.conda: no conda on PATH" in done.stderr


@pytest.mark.parametrize(
    ("extra", "problem"),
    [({"npm": "left-pad"}, "unknown key 'npm'"), ({"pip": "--index-url=x y"}, "must not start")],
)
def test_extra_packages_that_cannot_be_honoured_are_refused(
    extra: dict[str, str], problem: str
) -> None:
    recipe = {"type": "job", "spec": {"name": "j", "command": "true", "extra_packages": extra}}
    with pytest.raises(InvalidRecipe) as refused:
        parse_recipe(recipe)
    assert refused.value.problems[0].path == "spec.extra_packages"
    assert problem in refused.value.problems[0].message


def test_a_command_naming_its_container_port_is_served_there() -> None:
    saturn = DeploymentSpec.model_validate(
        {
            "name": "w",
            "command": "python3 -m http.server 8000",
            "routes": [{"container_port": 8000}],
        }
    )
    assert replica_host_ports(saturn) == {8000: 8000}
    assert saturn.replica_job({8000: 8000})["environment_variables"]["PORT"] == "8000"
    flotilla = DeploymentSpec.model_validate(
        {
            "name": "w",
            "command": "python3 -m http.server $PORT",
            "routes": [{"container_port": 8000}],
        }
    )
    assert replica_host_ports(flotilla)[8000] != 8000
    reads_env = DeploymentSpec.model_validate({"name": "w", "command": "python3 serve.py"})
    assert reads_env.literal_container_ports() == set()


def test_a_replica_that_does_not_answer_says_where_it_was_looked_for() -> None:
    run = RunModel(id="r1", status="running", replica_ports={"8000": 41000})
    replica = Replica(run, TaskModel(address="localhost"))
    reason = not_ready_reason(replica, ready=set())
    assert reason is not None
    assert "127.0.0.1:41000" in reason and "$PORT (=41000)" in reason and "8000" in reason
    assert not_ready_reason(replica, ready={"r1"}) is None


async def test_saturn_clients_deployment_waits_for_start_and_is_named_by_id(
    sqlite_api: Api,
) -> None:
    client = sqlite_api.client
    recipe = {"type": "deployment", "spec": {"name": "web", "command": "sleep 30"}}
    applied = await client.put("/api/recipes", json=recipe, headers=SATURN)
    assert applied.status_code == 201, applied.text
    ref = applied.json()["state"]["id"]
    view = (await client.get(f"/api/deployments/{ref}")).json()
    assert (view["status"], view["desired_replicas"], view["replicas"]) == ("stopped", 0, [])
    started = await client.post(f"/api/deployments/{ref}/start")
    assert started.status_code == 200 and started.json()["stopped"] is False
    stopped = await client.post(f"/api/deployments/{ref}/stop")
    assert stopped.json()["stopped"] is True
    history = await client.get(f"/api/deployments/{ref}/history")
    assert history.status_code == 200 and isinstance(history.json()["pods"], list)
    assert (await client.get(f"/api/deployments/{ref}/logs")).status_code == 200
    assert (await client.delete(f"/api/deployments/{ref}")).status_code == 204
    assert (await client.get("/api/deployments/web")).status_code == 404


async def test_flotillas_own_apply_starts_a_deployment_at_once(sqlite_api: Api) -> None:
    recipe = {"type": "deployment", "spec": {"name": "web", "command": "sleep 30"}}
    assert (await sqlite_api.client.put("/api/recipes", json=recipe)).status_code == 201
    assert (await sqlite_api.client.get("/api/deployments/web")).json()["stopped"] is False


async def test_orgs_and_sizes_answer_like_saturn(sqlite_api: Api) -> None:
    orgs = (await sqlite_api.client.get("/api/orgs")).json()
    assert orgs["next_key"] is None and [o["is_primary"] for o in orgs["orgs"]] == [True]
    sizes = (await sqlite_api.client.get("/api/info/servers")).json()["sizes"]
    assert "local" in sizes
    assert all(isinstance(s["cores"], int) and isinstance(s["gpu"], int) for s in sizes.values())
