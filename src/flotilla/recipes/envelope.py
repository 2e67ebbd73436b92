"""The recipe envelope (`schema_version / type / spec / state`) and its parsing.

`parse_recipe` turns a dict from YAML or JSON into a validated `Recipe`, or raises
`InvalidRecipe` naming every bad field by its path. An unknown field is reported with
the nearest valid name (Saturn's `enforce_unknown`). `state` is read-only: accepted so
that an exported recipe applies again unchanged, and ignored. Text that could not be
stored or sent back (a lone surrogate, a NUL) and absurd nesting are refused first,
wherever they are, so nothing downstream ever sees them.
"""

from __future__ import annotations

import copy
import difflib
import json
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from flotilla.core.jsontext import unstorable_text
from flotilla.errors import FieldProblem, InvalidRecipe
from flotilla.recipes.deployment import DeploymentSpec
from flotilla.recipes.fleet import FleetSpec
from flotilla.recipes.identity import IDENTITY_SPECS
from flotilla.recipes.job import JobSpec
from flotilla.recipes.load_balancer import LoadBalancerSpec
from flotilla.recipes.types import DEPLOYMENT, FLEET, JOB, LOAD_BALANCER

SCHEMA_VERSION = "2025.10.01"
MAX_SCHEMA_VERSION_LENGTH = 32  # the column that stores it
_ENVELOPE_KEYS = ("schema_version", "type", "spec", "state")
# One spec model per recipe type. user, group and project recipes are applied to
# the identity tables (see recipes/identity.py), the others stored as recipes.
_SPEC_MODELS: dict[str, type[BaseModel]] = {
    DEPLOYMENT: DeploymentSpec,
    FLEET: FleetSpec,
    JOB: JobSpec,
    LOAD_BALANCER: LoadBalancerSpec,
    **IDENTITY_SPECS,
}


def recipe_types() -> list[str]:
    return sorted(_SPEC_MODELS)


REF_TEMPLATE = "#/components/schemas/{model}"


def recipe_schema_components() -> dict[str, Any]:
    """The nested models the recipe schema refers to, for OpenAPI's components."""
    components: dict[str, Any] = {}
    for model in _SPEC_MODELS.values():
        components.update(model.model_json_schema(ref_template=REF_TEMPLATE).get("$defs", {}))
    return components


def recipe_json_schema() -> dict[str, Any]:
    """JSON Schema of the envelope, one branch per recipe type (for OpenAPI)."""
    branches = []
    for name, model in sorted(_SPEC_MODELS.items()):
        spec_schema = model.model_json_schema(ref_template=REF_TEMPLATE)
        spec_schema.pop("$defs", None)
        branches.append(
            {
                "type": "object",
                "title": f"{name} recipe",
                "required": ["type", "spec"],
                "properties": {
                    "schema_version": {"type": "string", "default": SCHEMA_VERSION},
                    "type": {"type": "string", "enum": [name]},
                    "spec": spec_schema,
                    "state": {"type": "object", "readOnly": True},
                },
                "additionalProperties": False,
            }
        )
    return {"oneOf": branches} if len(branches) > 1 else branches[0]


@dataclass(frozen=True)
class Recipe:
    type: str
    spec: BaseModel
    schema_version: str = SCHEMA_VERSION

    @property
    def name(self) -> str:
        name: str = getattr(self.spec, "name")  # noqa: B009 - every spec has a name
        return name

    def spec_dict(self) -> dict[str, Any]:
        """The spec as stored: defaults filled in, JSON-safe."""
        return self.spec.model_dump(mode="json")


def parse_recipe_text(text: str) -> Recipe:
    """Parse YAML (a superset of JSON) text into a validated recipe."""
    documents = load_documents(text)
    return parse_recipe(documents[0] if documents else None)


def load_documents(text: str) -> list[Any]:
    """The YAML (or JSON) documents of a recipe file, empty ones left out; bad YAML
    and nesting too deep for the parser raise InvalidRecipe (`flo apply` reads files
    this way)."""
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise InvalidRecipe([FieldProblem("<document>", f"not valid YAML or JSON{at}")]) from e
    except RecursionError as e:  # PyYAML's composer recurses once per level
        raise InvalidRecipe([FieldProblem("<document>", "nested too deeply")]) from e


def parse_recipe(data: Any, enforce_unknown: bool = True) -> Recipe:
    """Validate a recipe. With `enforce_unknown=False` (Saturn's flag, used when
    cloning), unknown fields are dropped instead of rejected."""
    _refuse_unstorable(data)
    if not enforce_unknown:
        data = _without_unknown(data)
    if not isinstance(data, dict):
        raise InvalidRecipe([FieldProblem("<document>", "a recipe must be a mapping")])
    problems = [
        FieldProblem(str(key), _unknown_message(str(key), _ENVELOPE_KEYS))
        for key in data
        if key not in _ENVELOPE_KEYS
    ]
    recipe_type = data.get("type")
    if recipe_type is None:
        problems.append(FieldProblem("type", f"required; one of {', '.join(recipe_types())}"))
    elif not isinstance(recipe_type, str):
        problems.append(
            FieldProblem("type", f"must be a string: one of {', '.join(recipe_types())}")
        )
    elif recipe_type not in _SPEC_MODELS:
        problems.append(
            FieldProblem("type", _unknown_message(recipe_type, recipe_types(), "recipe type"))
        )
    schema_version = data.get("schema_version", SCHEMA_VERSION)
    if isinstance(schema_version, bool) or not isinstance(schema_version, str | int | float):
        problems.append(FieldProblem("schema_version", "must be a string like 2025.10.01"))
    elif len(str(schema_version)) > MAX_SCHEMA_VERSION_LENGTH:
        problems.append(
            FieldProblem("schema_version", f"at most {MAX_SCHEMA_VERSION_LENGTH} characters")
        )
    spec_data = data.get("spec")
    if not isinstance(spec_data, dict):
        problems.append(FieldProblem("spec", "required; must be a mapping"))
    if problems or not isinstance(spec_data, dict):
        raise InvalidRecipe(problems)
    model = _SPEC_MODELS[str(recipe_type)]
    try:
        spec = model.model_validate(spec_data)
    except ValidationError as e:
        raise InvalidRecipe(_problems_from(e, model, "spec")) from e
    return Recipe(str(recipe_type), spec, str(schema_version))


def parse_typed(data: Any, recipe_type: str, model: type[BaseModel]) -> BaseModel:
    """Validate an envelope of one expected type into `model` (`flo simulate` reads a
    fleet file this way), with the same field-path errors as `parse_recipe`."""
    if not isinstance(data, dict) or data.get("type") != recipe_type:
        raise InvalidRecipe([FieldProblem("type", f"expected a {recipe_type} recipe")])
    unknown = [k for k in data if k not in _ENVELOPE_KEYS]
    if unknown:
        raise InvalidRecipe([FieldProblem(k, _unknown_message(k, _ENVELOPE_KEYS)) for k in unknown])
    try:
        return model.model_validate(data.get("spec"))
    except ValidationError as e:
        raise InvalidRecipe(_problems_from(e, model, "spec")) from e


def _refuse_unstorable(data: Any) -> None:
    problems = unstorable_text(data)
    if problems:
        raise InvalidRecipe(
            [FieldProblem(_format_path(p.loc) or "<document>", p.message) for p in problems]
        )


def _without_unknown(data: Any) -> Any:
    """A copy of `data` without the fields its spec model does not know. Pydantic's
    error locations lead to them (a key may hold a dot, so a path string would not);
    whatever else is wrong is left for `parse_recipe` to report."""
    if not isinstance(data, dict):
        return data
    data = {k: v for k, v in data.items() if k in _ENVELOPE_KEYS}
    recipe_type, spec = data.get("type"), data.get("spec")
    model = _SPEC_MODELS.get(recipe_type) if isinstance(recipe_type, str) else None
    if model is None or not isinstance(spec, dict):
        return data
    spec = copy.deepcopy(spec)
    for _ in range(100):  # each round removes at least one field, or stops
        try:
            model.model_validate(spec)
            break
        except ValidationError as e:
            unknown = [item["loc"] for item in e.errors() if item["type"] == "extra_forbidden"]
            dropped = [_drop(spec, loc) for loc in unknown]
            if not unknown or not all(dropped):
                break
    return {**data, "spec": spec}


def _drop(data: Any, loc: tuple[Any, ...]) -> bool:
    """Remove the field at `loc`; False where `loc` does not lead into `data` (a
    union's branch name in it, say): that field is then reported, not dropped."""
    target = data
    for part in loc[:-1]:
        try:
            target = target[part]
        except (KeyError, IndexError, TypeError):
            return False
    if not isinstance(target, dict) or loc[-1] not in target:
        return False
    del target[loc[-1]]
    return True


def _problems_from(
    error: ValidationError, model: type[BaseModel], prefix: str
) -> list[FieldProblem]:
    problems = []
    for item in error.errors():
        loc = item["loc"]
        path = _format_path((prefix, *loc))
        if item["type"] == "extra_forbidden":
            known = _field_names_at(model, loc[:-1])
            problems.append(FieldProblem(path, _unknown_message(str(loc[-1]), known)))
        else:
            message = str(item["msg"]).removeprefix("Value error, ")
            problems.append(FieldProblem(path, message))
    return problems


def _format_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out


def _field_names_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the nested model found by following `loc` from `model`."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = current.model_fields.get(part) if _is_model(current) else None
        if field is None:
            return []
        current = _model_in(field.annotation)
    return list(current.model_fields) if _is_model(current) else []


def _is_model(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseModel)


def _model_in(annotation: Any) -> Any:
    """The BaseModel class inside `X`, `list[X]`, `X | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unknown_message(name: str, known: Any, what: str = "field") -> str:
    choices = [str(k) for k in known]
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else f"; expected one of: {', '.join(choices)}"
    return f"unknown {what} '{name}'{hint}"


def dump_recipe(
    recipe_type: str,
    spec: dict[str, Any],
    state: dict[str, Any] | None = None,
    schema_version: str = SCHEMA_VERSION,
) -> dict[str, Any]:
    """The envelope as the API returns it and `flo export` writes it."""
    out: dict[str, Any] = {"schema_version": schema_version, "type": recipe_type, "spec": spec}
    if state is not None:
        out["state"] = state
    return out


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
