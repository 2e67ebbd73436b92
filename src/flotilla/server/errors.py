"""One place that turns exceptions into HTTP responses: client mistakes become JSON
4xx bodies `{"error_code", "message", "errors"}`, temporary trouble a 503 with
Retry-After, anything else a 500 that says nothing about internals."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException

from flotilla.errors import ClientError, FieldProblem, TemporaryError
from flotilla.server.bodytext import RefuseUnstorableText

log = logging.getLogger("flotilla.api")
# What FastAPI raises (an HTTPException) for a JSON body it cannot parse.
FASTAPI_UNPARSEABLE_BODY = "There was an error parsing the body"


def _format_loc(loc: tuple[object, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def install_error_handlers(app: FastAPI) -> None:
    # A JSON body whose text cannot be stored is an invalid request, refused before
    # any route (and so any transaction) sees it; see `bodytext.py`.
    app.add_middleware(RefuseUnstorableText)

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
        if exc.status_code == 400 and exc.detail == FASTAPI_UNPARSEABLE_BODY:
            body = {"error_code": "invalid_json", "message": "the request body is not valid JSON"}
            return JSONResponse(body, status_code=400)
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


# SQLite's primary result codes (the low byte of an extended code) and PostgreSQL's
# SQLSTATEs that mean the store cannot take writes now, not that the request is wrong.
_SQLITE_FULL, _SQLITE_READONLY = 13, 8
_PG_READ_ONLY = "25006"  # read_only_sql_transaction (a standby, a read-only database)
_PG_RESOURCES = "53"  # insufficient_resources: disk_full (53100), out of memory, ...


def is_storage_unavailable(exc: DBAPIError) -> bool:
    """Whether the database refused because it cannot write (disk full, read-only)."""
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_FULL, _SQLITE_READONLY)
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return isinstance(state, str) and (state == _PG_READ_ONLY or state.startswith(_PG_RESOURCES))


def install_storage_error_handler(app: FastAPI) -> None:
    """A database that cannot write (full disk, read-only) answers 503
    `storage_unavailable`, not a 500: the request may work later, and reads, which
    need no write, keep working meanwhile. Other database errors stay 500s."""

    @app.exception_handler(DBAPIError)
    async def storage_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if not is_storage_unavailable(exc):
            raise exc  # to the catch-all 500 handler
        log.error("storage unavailable on %s %s: %s", request.method, request.url.path, exc.orig)
        return JSONResponse(
            {
                "error_code": "storage_unavailable",
                "message": "the database cannot store changes now (disk full or read-only); "
                "reads still work: try again later",
            },
            status_code=503,
            headers={"Retry-After": "30"},
        )
