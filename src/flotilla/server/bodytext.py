"""ASGI middleware that refuses an API request whose JSON body holds text nothing can
store or send back (a lone surrogate such as `"\\ud800"`, a NUL) or nests deeper
than any request needs, with a 422 naming the field (`body.spec.command`), as any
invalid request. Without it such a body reached the database (a 500, or worse, a
row stored that no listing could encode again) or the JSON parser's recursion
limit (a 500). `errors.install_error_handlers` installs it, inside the body-size
limit, so a body is only read here once it is known to be small enough.

Checked: JSON bodies (or bodies without a content type, which FastAPI reads as
JSON) of `/api/` requests. The front door's bodies (`/d/…`) belong to the
deployment they go to and are passed on untouched. A body that is not JSON at all
is left to FastAPI, which says so.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flotilla.core.jsontext import unstorable_text
from flotilla.errors import ClientError, FieldProblem
from flotilla.server.error_response import send_error

API_PREFIX = "/api/"
_WITH_BODY = ("POST", "PUT", "PATCH", "DELETE")


class RefuseUnstorableText:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _checked(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away (or the size limit said so): nobody to answer
        error = problems_in(body)
        if error is not None:
            await send_error(send, error)
            return
        await self.app(scope, _replay(body, receive), send)


def problems_in(body: bytes) -> ClientError | None:
    """The 422 for a JSON body that cannot be stored, or None if it can (or if it is
    no JSON at all, which the route's own parsing reports)."""
    if not body:
        return None
    try:
        data: Any = json.loads(body)
    except RecursionError:
        problems = [FieldProblem("body", "nested too deeply")]
    except ValueError:
        return None
    else:
        problems = [
            FieldProblem(_format_loc(("body", *p.loc)), p.message) for p in unstorable_text(data)
        ]
    if not problems:
        return None
    summary = "; ".join(f"{p.path}: {p.message}" for p in problems)
    return ClientError(f"invalid request: {summary}", "invalid_request", 422, problems)


def _checked(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
        return False
    if not str(scope["path"]).startswith(API_PREFIX):
        return False
    for name, value in scope["headers"]:
        if name == b"content-type":
            kind = bytes(value).decode("latin-1").split(";")[0].strip().lower()
            return kind == "application/json" or (
                kind.startswith("application/") and kind.endswith("+json")
            )
    return True


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body once, as the app expects it; then the connection's own messages
    (a disconnect, for streaming responses that watch for one)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _format_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
