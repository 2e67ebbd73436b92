"""Recipe parsing: YAML and JSON, Saturn's shapes, unknown fields, read-only state."""

from __future__ import annotations

import json

import pytest

from flotilla.errors import InvalidRecipe
from flotilla.recipes import JobSpec, parse_recipe, parse_recipe_text

SATURN_RECIPE = """\
schema_version: 2025.10.01
type: job
spec:
  name: gpu-inference
  image: saturncloud/saturn:2025.06.01
  instance_type: nebius-gpu-h200-sxm-1gpu-16vcpu-200gb
  command: python run_inference.py
  working_directory: /home/jovyan/workspace
  git_repositories:
  - url: git@github.com:your-org/your-repo.git
    reference: main
  scale: 1
  use_spot_instance: false
state:
  id: 30ea539f
  status: running
"""


def test_saturn_documented_recipe_parses() -> None:
    recipe = parse_recipe_text(SATURN_RECIPE)
    assert recipe.type == "job" and recipe.schema_version == "2025.10.01"
    spec = recipe.spec
    assert isinstance(spec, JobSpec)
    assert spec.git_repositories[0].reference_type == "branch"
    assert spec.git_repositories[0].on_restart == "reclone"


def test_json_and_yaml_give_the_same_spec() -> None:
    from_yaml = parse_recipe_text(SATURN_RECIPE)
    data = json.loads(json.dumps({"type": "job", "spec": from_yaml.spec_dict()}))
    assert parse_recipe_text(json.dumps(data)).spec_dict() == from_yaml.spec_dict()


def test_list_command_from_saturn_client_is_decoded() -> None:
    # saturn-client JSON-encodes list commands before sending them.
    recipe = parse_recipe({"type": "job", "spec": {"name": "a", "command": '["python", "x.py"]'}})
    assert recipe.spec_dict()["command"] == ["python", "x.py"]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(InvalidRecipe) as caught:
        parse_recipe({"type": "job", "spec": {"name": "A", "scale": -1, "retries": "x", "nme": 1}})
    paths = {p.path for p in caught.value.problems}
    assert {"spec.name", "spec.scale", "spec.retries", "spec.command", "spec.nme"} <= paths


def test_broken_yaml_says_where() -> None:
    with pytest.raises(InvalidRecipe) as caught:
        parse_recipe_text("type: job\nspec: [unclosed\n")
    assert "line" in caught.value.problems[0].message


def test_enforce_unknown_false_drops_unknown_fields() -> None:
    recipe = parse_recipe(
        {
            "type": "job",
            "spec": {
                "name": "a",
                "command": "x",
                "ide": "jupyter",
                "secrets": [{"name": "s", "location": "S", "junk": 1}],
            },
        },
        enforce_unknown=False,
    )
    assert "ide" not in recipe.spec_dict() and recipe.spec_dict()["secrets"][0]["name"] == "s"


@pytest.mark.parametrize(
    "secret",
    [
        {"name": "s", "location": "not a var"},
        {"name": "s", "location": "../../etc/x", "attachment_type": "file"},
    ],
)
def test_secret_locations_are_checked(secret: dict[str, str]) -> None:
    with pytest.raises(InvalidRecipe):
        parse_recipe({"type": "job", "spec": {"name": "a", "command": "x", "secrets": [secret]}})
