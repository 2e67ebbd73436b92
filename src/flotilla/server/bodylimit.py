"""ASGI middleware that refuses request bodies over a size limit with 413 and the
API's JSON error body, so that no request makes the server hold more than the limit
in memory. `app.create_app` installs it around the whole app (uvicorn has no limit
of its own).

A declared Content-Length over the limit is refused before any of the body is read.
A body without one (chunked) is counted as the app reads it: past the limit the app
is told the client went away (`http.disconnect`), whatever it answers instead is
dropped, and the 413 goes out. A response the app started before then (streaming)
is left alone: the app simply saw the client leave.

The API's bodies are recipes, secrets and small requests (`max_request_bytes`);
deployments, reached through the front door (`/d/…`, which holds a body in memory
before it sends it on), may take uploads: they have their own, larger limit
(`max_frontdoor_bytes`). A limit of 0 means none.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flotilla.errors import ClientError
from flotilla.server.error_response import send_error

FRONTDOOR_PREFIX = "/d/"


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int, frontdoor_limit: int) -> None:
        self.app = app
        self.limit = limit
        self.frontdoor_limit = frontdoor_limit

    def limit_for(self, path: str) -> int:
        return self.frontdoor_limit if path.startswith(FRONTDOOR_PREFIX) else self.limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.limit_for(scope["path"]) if scope["type"] == "http" else 0
        if limit <= 0:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit, scope["path"])
        elif declared is not None:
            # The HTTP server delivers no more than the declared length.
            await self.app(scope, receive, send)
        else:
            await _Counted(self.app, limit).run(scope, receive, send)


class _Counted:
    """One request whose body has no declared length, counted as it is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.received = 0
        self.over = False
        self.app_started = False  # the app's response went out before the body ran over

    async def run(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted_receive() -> Message:
            if self.over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if self.over and not self.app_started:
                return  # its answer to a body it never got whole; the 413 replaces it
            if message["type"] == "http.response.start":
                self.app_started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not self.over or self.app_started:
                raise
            # The app failed on the disconnect it was told of: expected, not an error.
        if self.over and not self.app_started:
            await _refuse(send, self.limit, scope["path"])


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses those itself
    return None


async def _refuse(send: Send, limit: int, path: str) -> None:
    frontdoor = path.startswith(FRONTDOOR_PREFIX)
    setting = "FLOTILLA_MAX_FRONTDOOR_BYTES" if frontdoor else "FLOTILLA_MAX_REQUEST_BYTES"
    error = ClientError(
        f"request body over the limit of {limit} bytes (set by {setting})",
        "request_too_large",
        413,
    )
    # The rest of the body is never read: this connection cannot be reused.
    await send_error(send, error, [(b"connection", b"close")])
