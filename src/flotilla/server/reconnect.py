"""ASGI middleware for database connections lost mid-request (a PostgreSQL restart
or failover, `pg_terminate_backend`, a network cut): `app.create_app` installs it.

The pool replaces dead idle connections before use (`pool_pre_ping`, `db/engine.py`),
but a connection that dies while a request uses it fails that request. A read
(GET, HEAD) changes nothing, so it is run again once, on a fresh connection. Any
other request answers 503 `database_unavailable` with Retry-After instead of a 500:
its transaction was rolled back with the connection, or — if the connection died in
COMMIT — may have happened, which only the client can settle (starts take an
`Idempotency-Key` for that).

A request PostgreSQL picked to undo, to break a deadlock with another transaction
(or a serialization failure), is treated alike: its transaction was rolled back
whole, a read is run again once, and a write answers 503 `database_conflict`
with Retry-After (nothing it asked was done, and its body cannot be replayed).
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flotilla.errors import ClientError
from flotilla.server.error_response import send_error

log = logging.getLogger("flotilla.api")
IDEMPOTENT = frozenset({"GET", "HEAD"})


# SQLSTATEs of a transaction the database undid to let others go on.
CONFLICTS = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure


def is_dropped_connection(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in CONFLICTS


def _retryable(exc: DBAPIError) -> bool:
    return is_dropped_connection(exc) or is_conflict(exc)


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
            if started or not _retryable(e):
                raise
            what = _what(e)
            if scope["method"] not in IDEMPOTENT:
                log.warning("%s during %s %s", what, scope["method"], scope["path"])
                await _unavailable(send, e)
                return
            log.warning("%s during %s, running it again", what, scope["path"])
        try:
            await self.app(scope, _bodyless(receive), watch)
        except DBAPIError as e:
            if started or not _retryable(e):
                raise
            await _unavailable(send, e)


def _what(exc: DBAPIError) -> str:
    return "database conflict (deadlock)" if is_conflict(exc) else "database connection lost"


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


async def _unavailable(send: Send, exc: DBAPIError) -> None:
    if is_conflict(exc):
        error = ClientError(
            "the database undid this request to break a deadlock with another: "
            "nothing it asked was done; try again",
            "database_conflict",
            503,
        )
    else:
        error = ClientError("lost the database connection: try again", "database_unavailable", 503)
    await send_error(send, error, [(b"retry-after", b"1")])
