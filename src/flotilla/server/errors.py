"""One place that turns exceptions into HTTP responses: client mistakes become JSON
4xx bodies `{"error_code", "message", "errors"}`, temporary trouble a 503 with
Retry-After, anything else a 500 that says nothing about internals."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from flotilla.errors import ClientError, FieldProblem, TemporaryError

log = logging.getLogger("flotilla.api")


def _format_loc(loc: tuple[object, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ClientError)
    async def client_error(_: Request, exc: ClientError) -> JSONResponse:
        return JSONResponse(exc.as_dict(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [FieldProblem(_format_loc(tuple(e["loc"])), str(e["msg"])) for e in exc.errors()]
        error = ClientError(
            "invalid request: " + "; ".join(f"{p.path}: {p.message}" for p in problems),
            "invalid_request",
            422,
            problems,
        )
        return JSONResponse(error.as_dict(), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            {"error_code": code, "message": str(exc.detail)}, status_code=exc.status_code
        )

    @app.exception_handler(TemporaryError)
    async def temporary_error(_: Request, exc: TemporaryError) -> JSONResponse:
        return JSONResponse(
            {"error_code": "unavailable", "message": str(exc)},
            status_code=503,
            headers={"Retry-After": str(max(1, round(exc.retry_after)))},
        )

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {
                "error_code": "internal",
                "message": "internal server error (details in the server log)",
            },
            status_code=500,
        )
