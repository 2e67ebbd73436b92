"""The typed contract (`flotilla/api/`, issue 13): `/openapi.json` describes the
2xx body of (nearly) every operation — a JSON schema with properties, a declared
non-JSON content type (text, CSV, a stream), or a 204 — and every error it
documents, FastAPI's own 422 included (`server/openapi.py`), uses the one error
body the server sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flotilla.config import Settings
from flotilla.server.app import create_app
from tests.conftest import make_settings, open_api

COVERAGE = 0.95


def _spec(tmp_path: Path) -> dict[str, Any]:
    spec: dict[str, Any] = create_app(Settings(data_dir=tmp_path, admin_token="x")).openapi()
    return spec


def _typed(op: dict[str, Any], schemas: dict[str, Any]) -> bool:
    for code, response in op.get("responses", {}).items():
        if not code.startswith("2"):
            continue
        if code == "204":
            return True
        for content_type, body in response.get("content", {}).items():
            if content_type != "application/json":
                return True  # a declared text, CSV or stream body
            schema = body.get("schema") or {}
            if "$ref" in schema:
                schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
            if schema.get("properties") or schema.get("items") or schema.get("anyOf"):
                return True
    return False


def test_nearly_every_operation_describes_its_success_body(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    schemas = spec.get("components", {}).get("schemas", {})
    ops = [(m.upper(), p, op) for p, item in spec["paths"].items() for m, op in item.items()]
    untyped = [f"{m} {p}" for m, p, op in ops if not _typed(op, schemas)]
    typed = 1 - len(untyped) / len(ops)
    assert typed >= COVERAGE, f"{typed:.0%} of {len(ops)} typed; not: {untyped}"


def test_documented_errors_use_the_error_body(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    wrong = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for code, response in op.get("responses", {}).items():
                if code[0] not in "45":
                    continue
                schema = response.get("content", {}).get("application/json", {}).get("schema")
                if schema != {"$ref": "#/components/schemas/ErrorBody"}:
                    wrong.append(f"{method.upper()} {path} {code}: {schema}")
    assert wrong == []


async def test_a_body_that_is_not_text_is_a_documented_400(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data")
    async for api in open_api(settings):
        answer = await api.client.post(
            "/api/secrets", content=b"\xff\xfe{", headers={"Content-Type": "application/json"}
        )
        assert answer.status_code == 400, answer.text
        assert answer.json() == {
            "error_code": "invalid_json",
            "message": "the request body is not valid JSON",
        }
        documented = (await api.client.get("/openapi.json")).json()
        assert "400" in documented["paths"]["/api/secrets"]["post"]["responses"]
