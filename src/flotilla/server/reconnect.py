"""ASGI middleware for database connections lost mid-request (a PostgreSQL restart
or failover, `pg_terminate_backend`, a network cut): `app.create_app` installs it.

The pool replaces dead idle connections before use (`pool_pre_ping`, `db/engine.py`),
but a connection that dies while a request uses it fails that request. A read
(GET, HEAD) changes nothing, so it is run again once, on a fresh connection. Any
other request answers 503 `database_unavailable` with Retry-After instead of a 500:
its transaction was rolled back with the connection, or — if the connection died in
COMMIT — may have happened, which only the client can settle (starts take an
`Idempotency-Key` for that).
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flotilla.errors import ClientError
from flotilla.server.error_response import send_error

log = logging.getLogger("flotilla.api")
IDEMPOTENT = frozenset({"GET", "HEAD"})


def is_dropped_connection(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class RetryDroppedConnection:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
            return
        except DBAPIError as e:
            if started or not is_dropped_connection(e):
                raise
            if scope["method"] not in IDEMPOTENT:
                log.warning("database connection lost during %s %s", scope["method"], scope["path"])
                await _unavailable(send)
                return
            log.warning("database connection lost during %s, running it again", scope["path"])
        try:
            await self.app(scope, _bodyless(receive), watch)
        except DBAPIError as e:
            if started or not is_dropped_connection(e):
                raise
            await _unavailable(send)


def _bodyless(receive: Receive) -> Receive:
    """The request's (empty) body once more, then the client's own messages."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await receive()

    return again


async def _unavailable(send: Send) -> None:
    error = ClientError("lost the database connection: try again", "database_unavailable", 503)
    await send_error(send, error, [(b"retry-after", b"1")])
