"""`/openapi.json`: FastAPI's description of the routes, with two corrections so it
says what the server really sends. The recipe schema's nested models are added
(the recipe routes refer to them), and the 422 FastAPI documents by itself — its
`HTTPValidationError` shape — is the one error body every error has
(`api/base.ErrorBody`, rendered by `server/errors.py`); and every route that takes
a body says it answers 400 `invalid_json` when the body is not JSON. Called by
`server/app.py`."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from flotilla.api.base import ErrorBody
from flotilla.recipes.envelope import recipe_schema_components

_FASTAPI_422 = "#/components/schemas/HTTPValidationError"
_ERROR = "#/components/schemas/ErrorBody"


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(recipe_schema_components())
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            invalid = operation.get("responses", {}).get("422")
            body = (invalid or {}).get("content", {}).get("application/json", {})
            if body.get("schema", {}).get("$ref") == _FASTAPI_422:
                body["schema"] = {"$ref": _ERROR}
                invalid["description"] = "invalid input: `errors` names the fields"
            if "requestBody" in operation:
                operation["responses"].setdefault("400", _UNPARSEABLE)
    for fastapi_only in ("HTTPValidationError", "ValidationError"):
        components.pop(fastapi_only, None)
    components.setdefault("ErrorBody", ErrorBody.model_json_schema(ref_template=_REF))
    return schema


_REF = "#/components/schemas/{model}"
_UNPARSEABLE = {
    "description": "the body is not valid JSON (`invalid_json`), or cannot succeed as made",
    "content": {"application/json": {"schema": {"$ref": _ERROR}}},
}
