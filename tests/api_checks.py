"""What the API contract tests share (`tests/test_api_*_models.py`): the served
OpenAPI document, whether a route documents an error status with the one error
body, and a round trip of an answer through its model (it must give back exactly
the JSON the server sent)."""

from __future__ import annotations

from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from tests.conftest import Api

M = TypeVar("M", bound=BaseModel)


async def openapi(api: Api) -> dict[str, Any]:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200, response.text
    return dict(response.json())


def documented(spec: dict[str, Any], method: str, path: str, status: int) -> bool:
    """Whether the route documents `status` with the shared error body."""
    answer = spec["paths"][path][method]["responses"].get(str(status), {})
    schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/ErrorBody"))


async def check(
    api: Api, model: type[M], method: str, url: str, status: int = 200, **kwargs: Any
) -> M:
    """The answer, read by `model`; it must give back exactly the JSON it read."""
    response = await api.client.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    parsed = model.model_validate_json(response.content)
    assert parsed.model_dump(mode="json", exclude_unset=True) == response.json()
    return parsed


async def refused(
    api: Api, spec: dict[str, Any], method: str, url: str, path: str, status: int, **kwargs: Any
) -> httpx.Response:
    """An error the route answers, which its OpenAPI entry must name."""
    response = await api.client.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    assert documented(spec, method.lower(), path, status), (method, path, status)
    return response
